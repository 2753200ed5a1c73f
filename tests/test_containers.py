"""The operators' containers: docker-compose.yml against the Compose specification, and Dockerfile.gpu.

No Docker engine is needed: check-jsonschema ships the compose-spec JSON Schema, and the rest is read
from the parsed files. Fast (a few seconds), no Redis, no TensorFlow.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile.gpu"

# task_time_limit = FEATUREVIS_SOFT_TIME_LIMIT (default 3000 s) + 60 s, see featurevis/celeryconfig.py:
# a worker's stop grace period must let the longest job finish.
LONGEST_JOB_S = 3000 + 60
SECRETS = ("REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "FLOWER_USER", "FLOWER_PASSWORD")


def _load(path: Path):
    return YAML(typ="safe").load(path.read_text())


def _dump(data, path: Path) -> None:
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    with path.open("w") as f:
        yaml.dump(data, f)


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120)


def _seconds(duration: str) -> float:
    """A Compose duration ("3700s", "1h2m", "1m30s", "500ms") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a Compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _words(command) -> str:
    return command if isinstance(command, str) else " ".join(command)


def _defaults(text: str) -> str:
    """A compose string with each ${VAR:-default} replaced by its default, as compose does with VAR unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


@pytest.fixture(scope="module")
def compose():
    return _load(COMPOSE)


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


@pytest.fixture(scope="module")
def workers(services):
    found = {int(m.group(1)): svc for name, svc in services.items()
             if (m := re.fullmatch(r"worker-gpu(\d+)", name))}
    assert {0, 1} <= set(found), f"expected worker-gpu0 and worker-gpu1, got {sorted(services)}"
    return found


# --- the Compose specification ------------------------------------------------------------------

def test_compose_file_is_valid_compose_spec():
    result = _validate(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout


@pytest.mark.parametrize("breakage", ["devices_as_string", "unknown_top_level_key"])
def test_validation_rejects_a_broken_compose_file(tmp_path, breakage):
    broken = _load(COMPOSE)
    if breakage == "devices_as_string":
        broken["services"]["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"] = "nvidia"
        expected = "devices"
    else:
        broken["workers"] = {"gpu0": {}}
        expected = "workers"
    path = tmp_path / "docker-compose.yml"
    _dump(broken, path)
    result = _validate(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Schema validation errors" in result.stdout + result.stderr
    assert expected in result.stdout + result.stderr


def test_no_version_key_and_dollars_escaped(compose):
    assert "version" not in compose, "the Compose specification has no version: key"
    for text in _strings(compose):
        # ${VAR...} is interpolated by compose on the host; a container-side $VAR must be written $$VAR.
        bare = re.findall(r"\$(?!\{)\w+", text.replace("$$", ""))
        assert not bare, f"{bare} in {text!r} would be interpolated by compose on the host; write $$"


# --- the services -------------------------------------------------------------------------------

def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)\s*([kmg]?)b?", size.lower()).groups()
    return int(number) * 1024 ** " kmg".index(unit or " ")


def test_redis(services):
    redis = services["redis"]
    assert redis["image"] == "redis:7.2"
    command = _words(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command
    # The password is read from the secret into a config on stdin, not put on the command line.
    assert "exec redis-server - " in command and 'requirepass "$$(cat /run/secrets/redis_password)"' in command
    assert redis["secrets"] == ["redis_password"]
    # noeviction means something only with a maxmemory, and that must sit below the container's limit.
    maxmemory = _bytes(re.search(r"--maxmemory (\S+)", command).group(1))
    limit = _bytes(redis["deploy"]["resources"]["limits"]["memory"])
    assert 0 < maxmemory < limit
    assert re.fullmatch(r"\d+:\d+", redis["user"]), "the image's redis user, by number"
    assert "redis-data:/data" in redis["volumes"]
    check = redis["healthcheck"]
    assert "redis-cli" in _words(check["test"]) and "ping" in _words(check["test"])
    assert "/run/secrets/redis_password" in _words(check["test"])
    assert {"interval", "timeout", "retries"} <= set(check)
    assert "ports" not in redis, "Redis is for the services on the compose network only"


def test_no_secret_on_a_command_line_or_in_a_variable(compose, services):
    """ps and docker inspect show commands and environments: secrets come in as files under /run/secrets."""
    assert set(compose["secrets"]) == {"redis_password", "flower_basic_auth"}
    assert {secret["environment"] for secret in compose["secrets"].values()} == {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH"}
    for name, svc in services.items():
        shown = [svc.get("command"), svc.get("entrypoint"), svc.get("healthcheck", {}).get("test"),
                 svc.get("environment")]
        for text in _strings(shown):
            for secret in SECRETS:
                assert "${" + secret not in text, f"{name} puts {secret} where ps or docker inspect show it: {text!r}"
            assert "--requirepass" not in text and "--basic-auth" not in text, f"{name}: {text!r}"
        if "REDIS_URL" in svc.get("environment", {}):
            assert svc["environment"]["REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"
            assert "redis_password" in svc["secrets"], f"{name} needs the password and does not mount it"


def test_every_service_rotates_its_logs(services):
    for name, svc in services.items():
        logging = svc.get("logging") or {}
        assert logging.get("driver") == "json-file" and logging["options"]["max-size"], f"{name} keeps all its logs"


def test_the_grace_period_outlasts_the_time_limit_and_the_worker_checks_it(workers):
    for worker in workers.values():
        grace = _seconds(_defaults(worker["stop_grace_period"]))
        assert grace > LONGEST_JOB_S
        # The same variable reaches the worker, which refuses to start if the limit does not fit.
        assert _defaults(str(worker["environment"]["FEATUREVIS_STOP_GRACE_PERIOD"])) == f"{grace:g}"
    code = "import featurevis.celeryconfig"
    env = {"PATH": "/usr/bin:/bin", "FEATUREVIS_SOFT_TIME_LIMIT": "3700", "FEATUREVIS_STOP_GRACE_PERIOD": "3700"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ValueError: FEATUREVIS_TIME_LIMIT 3760 must be below FEATUREVIS_STOP_GRACE_PERIOD 3700, "
        "the seconds a stopping worker is given to finish its job")


def test_one_worker_per_gpu(workers):
    for gpu, worker in workers.items():
        assert worker["build"]["dockerfile"] == "Dockerfile.gpu"
        assert worker["deploy"]["resources"]["reservations"]["devices"] == [
            {"driver": "nvidia", "device_ids": [str(gpu)], "capabilities": ["gpu"]}]
        # The container sees only its own GPU, as device 0.
        command = _words(worker["command"])
        assert "python -m worker --gpus 0" in command
        assert f"--hostname gpu{gpu}@%h" in command
        # %h is the container's hostname: fixed, so the node name survives a recreated container.
        assert worker["hostname"] == f"worker-gpu{gpu}"
        check = worker["healthcheck"]
        assert check["test"] == ["CMD", "python", "-m", "worker", "health", "--node", f"gpu{gpu}@%h"]
        assert _seconds(check["start_period"]) >= 120, "TensorFlow's import and the model build come first"
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
        assert worker["depends_on"]["fetch-weights"]["condition"] == "service_completed_successfully"
        assert "results:/results" in worker["volumes"]
        assert "keras-cache:/keras" in worker["volumes"]
        env = worker["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["RESULTS_DIR"] == "/results"
        assert env["KERAS_HOME"] == "/keras"
        assert env["FEATUREVIS_PRELOAD"] == "inception_v3"
    device_ids = [w["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for w in workers.values()]
    assert len({tuple(ids) for ids in device_ids}) == len(device_ids), "two workers on one GPU"
    assert len({w["hostname"] for w in workers.values()}) == len(workers), "two workers with one node name"


def test_weights_are_fetched_by_one_process_before_workers_start(services):
    fetch = services["fetch-weights"]
    assert fetch["command"] == ["python", "-m", "worker", "fetch-weights", "inception_v3"]
    assert fetch["environment"]["KERAS_HOME"] == "/keras" and "keras-cache:/keras" in fetch["volumes"]
    assert fetch["restart"] == "no"


def test_flower(services):
    flower = services["flower"]
    command = _words(flower["command"])
    assert 'export FLOWER_BASIC_AUTH="$$(cat /run/secrets/flower_basic_auth)"' in command
    assert "exec celery -A worker.app flower" in command
    assert "--purge_offline_workers=" in command, "Flower would list every recreated worker forever"
    assert "flower_basic_auth" in flower["secrets"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert "/healthcheck" in _words(flower["healthcheck"]["test"])
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"


def test_producer(services, workers):
    producer = services["producer"]
    assert producer["profiles"] == ["producer"]
    assert producer["entrypoint"] == ["python", "-m", "producer"]
    assert producer["environment"]["REDIS_URL"] == workers[0]["environment"]["REDIS_URL"]
    assert producer["environment"]["RESULTS_DIR"] == "/results"
    assert producer["environment"]["RESULTS_URL"] == "http://127.0.0.1:8080", "--wait prints a container path otherwise"
    assert "results:/results" in producer["volumes"]


def test_results_are_served_read_only_on_loopback(services):
    web = services["results"]
    assert re.fullmatch(r"nginxinc/nginx-unprivileged:\d+\.\d+-alpine", web["image"]), "an ordinary, pinned web server"
    [mount] = web["volumes"]
    assert mount["source"] == "results" and mount["target"] == "/usr/share/nginx/html"
    assert mount["read_only"] is True and mount["volume"]["nocopy"] is True
    assert web["ports"] == ["127.0.0.1:8080:8080"]


def test_queue_metrics_are_exported_on_loopback(services):
    metrics = services["metrics"]
    assert _words(metrics["command"]).startswith("python -m featurevis.metrics")
    assert metrics["ports"] == ["127.0.0.1:9808:9808"]
    assert "9808/metrics" in _words(metrics["healthcheck"]["test"])


def test_named_volumes_are_declared(compose, services):
    declared = set(compose["volumes"])
    assert {"redis-data", "results", "keras-cache"} <= declared
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_clients_share_the_time_limit(services, workers):
    """The visibility timeout derives from FEATUREVIS_SOFT_TIME_LIMIT; the shortest among the clients wins."""
    values = {name: svc["environment"].get("FEATUREVIS_SOFT_TIME_LIMIT")
              for name, svc in services.items() if "REDIS_URL" in svc.get("environment", {})}
    assert len(values) >= 5 and len(set(values.values())) == 1, values


# --- Dockerfile.gpu -----------------------------------------------------------------------------

def test_dockerfile_pins_tensorflow_and_runs_as_non_root():
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    froms = [line for line in lines if line.upper().startswith("FROM ")]
    assert len(froms) == 1
    match = re.fullmatch(r"FROM\s+tensorflow/tensorflow:(\d+\.\d+\.\d+)-gpu", froms[0])
    assert match, f"FROM must pin tensorflow/tensorflow:<x.y.z>-gpu, got {froms[0]!r}"
    # The same TensorFlow as `make setup` installs.
    makefile_tf = re.search(r"^TF_VERSION\s*:?=\s*(\S+)", (REPO_ROOT / "Makefile").read_text(), re.M)
    assert makefile_tf and match.group(1) == makefile_tf.group(1)
    users = [line.split()[1] for line in lines if line.upper().startswith("USER ")]
    assert users, "no USER line: the container would run as root"
    # Numeric, or Kubernetes' runAsNonRoot cannot verify it; and not root.
    assert re.fullmatch(r"\d+:\d+", users[-1]) and users[-1].split(":")[0] != "0", users[-1]
    # The runtime and its `s3` and `onnx` extras (a worker serves ONNX files), never the test tools or devstack's.
    installs = [line for line in lines if "pip install" in line]
    assert any(re.search(r'pip install --no-cache-dir "\.\[s3,onnx\]"', line) for line in installs), installs
    assert not any(re.search(r"\[[^]]*\b(test|dev)\b|requirements|pytest", line) for line in installs), installs
    assert any(line.startswith("CMD ") and '"worker"' in line for line in lines)


def test_the_image_and_make_setup_run_the_same_keras():
    """The base image ships a Keras of its own; pyproject.toml's dependencies (installed by both) pin it."""
    import tomllib
    from importlib.metadata import version

    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [spec.split("==", 1)[1] for spec in dependencies if re.match(r"keras\s*==", spec)]
    assert pins == [version("keras")], f"pyproject.toml pins keras {pins}; this venv has {version('keras')}"


def test_make_setup_stamps_the_whole_tensorflow_spec_and_clean_keeps_results():
    def dry_run(*args: str) -> str:
        # --no-print-directory: under `make test` this make is nested and would print where it runs.
        return subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=60).stdout

    assert "touch .venv/.setup-tensorflow-and-cuda-2.99.0" in dry_run("setup", "TF_PACKAGE=tensorflow[and-cuda]==2.99.0")
    assert "results" not in dry_run("clean")
    assert dry_run("clean-results").strip() == "rm -rf results"


def test_dockerignore_keeps_local_state_out():
    entries = {line.strip().removeprefix("**/") for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "results", ".git", "__pycache__", ".featurevis", ".pytest_cache"} <= entries


# --- safe defaults ------------------------------------------------------------------------------

def test_env_file_is_ignored_by_git_and_docker():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT)
    assert ignored.returncode == 0, ".env (the compose secrets) would be committed"
    entries = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert ".env" in entries, "COPY . /app would bake .env into an image layer"


def test_a_plain_celery_worker_runs_one_pool_process():
    from featurevis import celeryconfig

    assert celeryconfig.worker_concurrency == 1
    # Explicit, so Celery 6's new default cannot change what a Redis restart does to a running job.
    assert celeryconfig.worker_cancel_long_running_tasks_on_connection_loss is False


@pytest.mark.parametrize("fleet", [["--gpus", "0,1"], ["--cpu-workers", "2"]])
def test_concurrency_with_a_fleet_is_refused_not_dropped(fleet):
    done = subprocess.run([sys.executable, "-m", "worker", *fleet, "--concurrency", "4"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith("--concurrency is for a single worker: "
                                                 "--gpus and --cpu-workers run one process per member")


@pytest.mark.parametrize("source", ["REDIS_PASSWORD", "REDIS_PASSWORD_FILE"])
def test_the_redis_password_comes_from_a_secret_not_the_url(tmp_path, source):
    secret = tmp_path / "redis-password"
    secret.write_text("p@ss/word\n")
    value = str(secret) if source == "REDIS_PASSWORD_FILE" else "p@ss/word"
    code = "from featurevis import celeryconfig; print(celeryconfig.broker_url)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://redis:6379/0", source: value})
    assert done.stdout.strip() == "redis://:p%40ss%2Fword@redis:6379/0", done.stderr
