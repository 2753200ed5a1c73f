"""Operating the service: Flower shows progress live, three ways to enqueue, a fleet of workers, up/down."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time

import pytest
import redis

from devstack import stack as stack_module
from devstack.redis_server import RedisServer, free_port
from devstack.stack import REPO_ROOT, LocalStack
from featurevis.store import ResultStore
from producer import Producer
from tests.conftest import FLOWER_AUTH, UNTRAINED
from tests.events import EventLog

LONG_JOB = {"model": UNTRAINED, "conv_id": 5, "iterations": 150}


def _flower(stack) -> str:
    return f"http://127.0.0.1:{stack.flower_port}"


def _curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-s", "-S", "--max-time", "20", *args], capture_output=True, text=True, timeout=30)


def _chromium(url: str, *flags: str) -> str:
    browser = shutil.which("chromium")
    assert browser, "Debian's chromium is needed for this test: `make setup` installs it"
    profile = REPO_ROOT / ".featurevis" / "chromium-profile"
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--disable-quic", f"--user-data-dir={profile}", "--virtual-time-budget=4000", *flags, url],
                          capture_output=True, text=True, timeout=90)
    return done.stdout


def _wait_for_progress(job, at_least: int = 3):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        progress = job.progress()
        if progress and progress.iteration >= at_least:
            return progress
        time.sleep(0.1)
    raise AssertionError(f"job {job.id} showed no progress (state {job.state()})")


def test_flower_shows_live_progress_in_a_browser(stack, producer_api, tmp_path):
    job = producer_api.enqueue({**LONG_JOB, "feature": 11, "seed": 5})
    _wait_for_progress(job)
    user_password = FLOWER_AUTH
    base = _flower(stack).replace("http://", f"http://{user_password}@")
    first = _chromium(f"{base}/task/{job.id}", "--dump-dom")
    assert "PROGRESS" in first and "/150 loss=" in first, first[:2000]
    iteration = int(first.split("PROGRESS ")[1].split("/150")[0])
    time.sleep(2.5)  # events are throttled to one a second: a reload a little later shows a later iteration
    for _ in range(3):  # the list fills from a request of its own after the page loads: slower on a busy machine
        listing = _chromium(f"{base}/tasks", "--dump-dom")
        if job.id in listing:
            break
    assert job.id in listing and "PROGRESS" in listing
    later = _chromium(f"{base}/task/{job.id}", "--dump-dom")
    assert int(later.split("PROGRESS ")[1].split("/150")[0]) > iteration
    result = job.wait(timeout=240)
    info = json.loads(_curl("-u", FLOWER_AUTH, f"{_flower(stack)}/api/task/info/{job.id}").stdout)
    assert info["state"] == "SUCCESS" and result.key in info["result"]


def test_a_queued_job_shows_in_flower_before_a_worker_takes_it(stack, producer_api):
    running = producer_api.enqueue({**LONG_JOB, "feature": 12, "seed": 6})
    _wait_for_progress(running, 1)
    queued = producer_api.enqueue({"model": UNTRAINED, "conv_id": 5, "feature": 13, "iterations": 1, "seed": 6})
    time.sleep(1.5)
    info = json.loads(_curl("-u", FLOWER_AUTH, f"{_flower(stack)}/api/task/info/{queued.id}").stdout)
    assert info["state"] == "PENDING" and info["sent"] and not info.get("received"), info
    queued.wait(timeout=300)


def test_flower_api_needs_a_login_but_metrics_do_not(stack):
    denied = _curl("-o", "/dev/null", "-w", "%{http_code}", f"{_flower(stack)}/api/workers")
    assert denied.stdout == "401"
    metrics = _curl(f"{_flower(stack)}/metrics")
    assert "flower_events_total" in metrics.stdout


def test_flower_refuses_to_listen_beyond_loopback_without_a_login(tmp_path):
    exposed = LocalStack(results_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", flower_port=free_port(),
                         flower_address="0.0.0.0")
    with pytest.raises(ValueError, match="must have a login"):
        exposed.start_flower()


@pytest.mark.parametrize("route", ["send-task", "async-apply"])
def test_enqueue_through_flowers_http_api_with_curl(stack, producer_api, route):
    kwargs = {"model": UNTRAINED, "conv_id": 4, "feature": 3 if route == "send-task" else 4, "iterations": 2, "seed": 9}
    sent = _curl("-u", FLOWER_AUTH, "-X", "POST", "-H", "Content-Type: application/json",
                 "-d", json.dumps({"kwargs": kwargs}), f"{_flower(stack)}/api/task/{route}/featurevis.optimize")
    task_id = json.loads(sent.stdout)["task-id"]
    result = producer_api.app.AsyncResult(task_id).get(timeout=240)
    assert result["key"].startswith(f"{UNTRAINED}/conv2d_4/")


def test_a_bad_job_through_flower_fails_with_the_contract_error(stack, producer_api):
    sent = _curl("-u", FLOWER_AUTH, "-X", "POST", "-H", "Content-Type: application/json",
                 "-d", json.dumps({"kwargs": {"model": UNTRAINED, "iterations": "many"}}),
                 f"{_flower(stack)}/api/task/send-task/featurevis.optimize")
    outcome = producer_api.app.AsyncResult(json.loads(sent.stdout)["task-id"])
    with pytest.raises(Exception) as caught:
        outcome.get(timeout=120)
    assert str(caught.value) == 'iterations: must be an integer in 1..10000, got "many"'


def test_enqueue_with_celery_call(stack, producer_api):
    kwargs = {"model": UNTRAINED, "conv_id": 4, "feature": 5, "iterations": 2, "seed": 9}
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.app", "call", "featurevis.optimize",
                           "--kwargs", json.dumps(kwargs)], cwd=REPO_ROOT, env=stack.env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = producer_api.app.AsyncResult(done.stdout.strip()).get(timeout=240)
    assert result["key"].startswith(f"{UNTRAINED}/conv2d_4/feature_0005/")


def test_two_cpu_workers_share_eight_jobs_each_run_once(tmp_path):
    with RedisServer(data_dir=tmp_path / "redis") as server:
        env = {**LocalStack(results_dir=tmp_path / "results", redis_url=server.url).env(),
               "FEATUREVIS_PRELOAD": UNTRAINED}
        log = open(tmp_path / "fleet.log", "wb")
        fleet = subprocess.Popen([sys.executable, "-m", "worker", "--cpu-workers", "2"], cwd=REPO_ROOT, env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
        try:
            stack_module.wait_until(
                lambda: len(Producer(server.url).app.control.ping(timeout=0.5) or []) == 2, 120, "fleet not up")
            events = EventLog(server.url)
            producer = Producer(server.url)
            jobs = [producer.enqueue({"model": UNTRAINED, "conv_id": 1, "feature": f, "iterations": 25, "seed": 1})
                    for f in range(8)]
            results = [job.wait(timeout=300) for job in jobs]
            succeeded = events.settle("task-succeeded", [job.id for job in jobs])
            started = events.count("task-started")
            assert {job.id for job in jobs} == set(started) == set(succeeded)
            assert set(started.values()) == {1} and set(succeeded.values()) == {1}
            assert set(events.hostnames("task-started")) == {"cpu1", "cpu2"}
            assert all(not result.cached for result in results)
            events.close()
        finally:
            fleet.terminate()
            fleet.wait(timeout=60)


def test_make_down_keeps_queued_jobs_for_the_next_up(tmp_path, monkeypatch):
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    state = stack_module.up(state_dir=tmp_path / "state", flower_port=free_port(), metrics_port=free_port())
    try:
        producer = Producer(state["redis_url"])
        running = producer.enqueue({**LONG_JOB, "iterations": 40, "feature": 20, "seed": 1})
        _wait_for_progress(running, 1)
        queued = [producer.enqueue({"model": UNTRAINED, "conv_id": 5, "feature": f, "iterations": 2, "seed": 1})
                  for f in (21, 22)]
        stack_module.down(state_dir=tmp_path / "state")
        # Warm shutdown let the running job finish and publish before anything stopped.
        assert ResultStore(tmp_path / "results").read_meta(running.specs[0].key)["job_id"] == running.id
        for job in queued:
            assert ResultStore(tmp_path / "results").read_meta(job.specs[0].key) is None
        again = stack_module.up(state_dir=tmp_path / "state", flower_port=free_port(), metrics_port=free_port())
        assert again["redis_url"] == state["redis_url"]
        assert [job.wait(timeout=300).job_id for job in queued] == [job.id for job in queued]
    finally:
        stack_module.down(state_dir=tmp_path / "state")


def _metrics(url: str) -> dict[str, float]:
    """The exporter's samples as {'name{labels}': value}."""
    lines = _curl(url).stdout.splitlines()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("featurevis_")}


def test_the_queue_length_exporter_reads_what_redis_holds(tmp_path):
    from celery import Celery

    with RedisServer(data_dir=tmp_path / "redis") as server:
        exporter = LocalStack(results_dir=tmp_path / "results", redis_url=server.url, workers=0,
                              log_dir=tmp_path / "logs", metrics_port=free_port())
        with exporter:  # no worker: what is sent stays queued
            url = f"http://127.0.0.1:{exporter.metrics_port}/metrics"
            assert _metrics(url)['featurevis_queue_length{queue="celery"}'] == 0
            app = Celery(broker=server.url)
            app.config_from_object("featurevis.celeryconfig")
            app.conf.broker_url = server.url
            for feature in range(5):
                app.send_task("featurevis.optimize", kwargs={"model": UNTRAINED, "feature": feature})
            for feature in range(2):  # kombu keeps these in a second list, celery\x06\x166
                app.send_task("featurevis.optimize", kwargs={"model": UNTRAINED, "feature": feature}, priority=6)
            broker = redis.Redis.from_url(server.url)
            assert broker.llen("celery") == 5
            samples = _metrics(url)
            assert samples['featurevis_queue_length{queue="celery"}'] == 7 == sum(
                broker.llen(key) for key in broker.keys("celery*"))
            assert samples["featurevis_unacked_messages"] == 0 and samples["featurevis_redis_up"] == 1
            server.stop()
            assert _metrics(url) == {"featurevis_redis_up": 0}, "a scrape must answer while Redis is away"


def test_make_down_signals_no_process_whose_pid_was_reused(tmp_path):
    """A state file left from before a reboot: its PIDs now belong to unrelated processes."""
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        stack_module.wait_until(lambda: stack_module.identity(unrelated.pid)["cmdline"] == ["sleep", "60"], 5, "no exec")
        record = stack_module.identity(unrelated.pid)
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        stale = {"w1": {**record, "started": record["started"] - 3600},  # the same PID, started earlier
                 "flower": {**record, "cmdline": [sys.executable, "-m", "celery", "flower"]},
                 "redis": {**record, "pid": unrelated.pid, "started": 0.0}}
        (state_dir / "stack.json").write_text(json.dumps({"redis_url": "redis://127.0.0.1:1/0", "processes": stale}))
        assert sorted(stack_module.down(state_dir=state_dir, timeout=5)) == ["flower", "redis", "w1"]
        assert unrelated.poll() is None, "make down signalled a process that was not the stack's"
        # The record that does match is stopped.
        (state_dir / "stack.json").write_text(json.dumps({"redis_url": "redis://127.0.0.1:1/0",
                                                          "processes": {"w1": record}}))
        assert stack_module.down(state_dir=state_dir, timeout=5) == []
        assert unrelated.wait(timeout=5) == -15
    finally:
        unrelated.kill()


def test_flowers_login_is_not_on_its_command_line(stack):
    import psutil

    command = " ".join(psutil.Process(stack.processes["flower"].pid).cmdline())
    assert FLOWER_AUTH.split(":")[1] not in command and "basic-auth" not in command


def _health(stack, node: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker", "health", "--node", node, "--timeout", str(timeout)],
                          cwd=REPO_ROOT, env=stack.env(), capture_output=True, text=True, timeout=60)


def test_health_passes_once_the_worker_has_preloaded(stack):
    """Unhealthy while the pool child still builds its model (pings are answered before that), then healthy."""
    stack_module.wait_until(lambda: _health(stack, "w1@%h").returncode == 0, 120, "w1 never became healthy")
    assert _health(stack, "w1@%h").stdout == f"w1@{socket.gethostname()}: healthy\n"


def test_health_fails_for_a_node_that_does_not_answer(stack):
    done = _health(stack, "nobody@%h", timeout=1)
    assert done.returncode == 1 and "did not answer a ping within 1 s" in done.stderr


def test_health_fails_for_a_worker_whose_preload_failed(tmp_path):
    """inception_v3's ImageNet weights cannot be found in an empty KERAS_HOME nor downloaded here."""
    from celery import Celery

    from worker import health

    with LocalStack(results_dir=tmp_path / "results", preload="inception_v3", log_dir=tmp_path / "logs",
                    redis_dir=tmp_path / "redis", extra_env={"KERAS_HOME": str(tmp_path / "empty-keras")}) as broken:
        app = Celery(broker=broken.redis_url)
        node = f"w1@{socket.gethostname()}"
        stack_module.wait_until(lambda: health.read(app, node)["preload"] != health.STARTING, 120, "no preload report")
        assert broken.processes["w1"].poll() is None, "the worker itself is up and answers pings"
        done = _health(broken, "w1@%h")
        assert done.returncode == 1
        assert done.stderr.startswith(f"{node} could not preload inception_v3: ")
        assert "inception_v3_weights_tf_dim_ordering_tf_kernels.h5" in done.stderr


def test_meta_json_records_the_featurevis_version(producer_api, stack):
    import featurevis

    result = producer_api.enqueue({"model": UNTRAINED, "conv_id": 0, "feature": 30, "iterations": 1, "seed": 3}).wait(
        timeout=240)
    assert ResultStore(stack.results_dir).read_meta(result.key)["versions"]["featurevis"] == featurevis.__version__


def test_fetch_weights_builds_each_model_once_and_names_what_is_missing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "worker", "fetch-weights", "shapes_cnn", "inception_v3"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
                          env={**LocalStack(results_dir=tmp_path).env(), "KERAS_HOME": str(tmp_path / "keras")})
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == "shapes_cnn: weights in place"
    [error] = done.stderr.strip().splitlines()[-1:]
    assert error.startswith("error: model inception_v3: weights file inception_v3_weights_tf_dim_ordering_tf_kernels.h5")


def test_wait_prints_the_pictures_address_under_results_url(stack, run_cli, monkeypatch):
    """In compose the producer's RESULTS_DIR is a path inside its container; the results server is what users open."""
    monkeypatch.setenv("RESULTS_URL", "http://127.0.0.1:8080/")
    done = run_cli("enqueue", "--model", UNTRAINED, "--conv-id", "0", "--feature", "31", "--iterations", "1",
                   "--seed", "4", "--wait")
    assert done.returncode == 0, done.stderr
    job_id, address = done.stdout.split()
    assert address.startswith(f"http://127.0.0.1:8080/{UNTRAINED}/conv2d/feature_0031/{job_id}/")
    assert (stack.results_dir / address.removeprefix("http://127.0.0.1:8080/")).is_file()
