"""A model file is untrusted input: hostile files never reach Keras in a process that serves jobs.

A stack of its own, so its worker is a clean one whose models the test knows: every hostile file of
tests/hostile.py is registered through the CLI (the producer refuses it before uploading) and by name through
Celery, as another system would after putting the file in the store (the worker refuses it before any process
loads it). Afterwards the worker is the same process, its memory where it was, and a job on a model it had not
built yet gives the pinned pixels of a clean worker. The worker runs with a parameter bound far above the
producer's and a small sandbox, so a bomb consistent with itself gets past the static check and meets the
disposable process's memory limit instead: the second line holds on its own.
"""
from __future__ import annotations

import gc
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import psutil
import pytest

from devstack.stack import LocalStack
from featurevis import registry
from featurevis.registry import ModelRefused
from featurevis.store import LEGACY_MODEL_FILE, MODEL_FILE
from producer import Producer
from tests import hostile
from tests.cpu import pinned, pinned_png_sha256
from tests.test_modelcheck import REFUSALS

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_jobs.json").read_text())
SANDBOX_MB = 2048
WORKER_ENV = {"FEATUREVIS_MODEL_MAX_PARAMS": str(2**40), "FEATUREVIS_SANDBOX_MEMORY_MB": str(SANDBOX_MB)}
# The worker's parameter bound is raised, so its check stops the Dense bombs at the next bound it has.
WORKER_REFUSALS = {name: "file: layer logits outputs 268435456 values per image, over the bound of 134217728"
                   for name in ("dense_bomb", "h5_dense_bomb")}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    base = tmp_path_factory.mktemp("clean-worker")
    sandboxes = base / "sandboxes"
    sandboxes.mkdir()
    with LocalStack(results_dir=base / "results", log_dir=base / "logs", redis_dir=base / "redis",
                    extra_env={**WORKER_ENV, "FEATUREVIS_SANDBOX_DIR": str(sandboxes),
                               "KERAS_HOME": str(base / "keras-home")}) as stack:
        stack.sandboxes = sandboxes
        yield stack
        gc.collect()  # results that waited on this stack's Redis unsubscribe when collected: before it stops


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-files")
    marker = folder / "code-ran.txt"
    return hostile.build_all(folder, marker), marker


def _pool_child(stack) -> psutil.Process:
    [child] = psutil.Process(stack.processes["w1"].pid).children()
    return child


def _cli(stack, *args) -> tuple[int, str, float]:
    import subprocess

    started = time.perf_counter()
    env = {key: value for key, value in stack.env().items() if key not in WORKER_ENV}  # the producer's defaults
    done = subprocess.run([sys.executable, "-m", "producer", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    return done.returncode, done.stderr.strip(), time.perf_counter() - started


def _small_model(path: Path, seed: int, **conv) -> Path:
    keras.utils.set_random_seed(seed)
    pixels = keras.Input((16, 16, 3))
    keras.Model(pixels, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3, name="maps", **conv)(pixels)))).save(path)
    return path


@pytest.fixture(scope="module")
def warm(clean, tmp_path_factory):
    """The worker after one job and one registration (TensorFlow, one model and the registration path loaded),
    and its pool child's memory then."""
    producer = Producer(clean.redis_url, clean.results_dir)
    producer.enqueue({"model": "shapes_judge", "layer": "conv2", "feature": 1, "iterations": 3, "seed": 1}) \
        .wait(timeout=300)
    assert producer.register_model("first", file=_small_model(tmp_path_factory.mktemp("first") / "m.keras", 3))
    child = _pool_child(clean)
    return producer, child.pid, child.memory_info().rss


@pytest.fixture(scope="module")
def uploads(clean, files, warm) -> dict[str, dict[str, tuple[str, float]]]:
    """Every hostile file registered through the CLI and sent by name: {"cli"|"sent": {name: (said, seconds)}}."""
    hostile_files, _ = files
    producer = warm[0]
    said: dict[str, dict[str, tuple[str, float]]] = {"cli": {}, "sent": {}}
    def register(name: str) -> None:
        code, line, seconds = _cli(clean, "models", "register", f"cli-{name.replace('_', '-')}", "--file",
                                   str(hostile_files[name]))
        assert code == 2 and line.startswith("error: "), (name, code, line)
        said["cli"][name] = (line.removeprefix("error: ") if len(line.splitlines()) == 1 else line, seconds)

    with ThreadPoolExecutor(3) as users:  # several users at once: each CLI run is a process of its own
        list(users.map(register, hostile_files))
    for name, path in hostile_files.items():
        model = f"sent-{name.replace('_', '-')}"
        version = registry.version_of_file(path)
        upload = LEGACY_MODEL_FILE if name.startswith("h5_") else MODEL_FILE
        producer.registry.store.put(producer.registry.key(model, version), upload, path.read_bytes())
        started = time.perf_counter()
        sent = producer.app.send_task("featurevis.register_model", kwargs={
            "name": model, "sha256": version, "source": {"file": upload}, "preprocess": None, "class_names": None})
        with pytest.raises(ModelRefused) as refused:
            sent.get(timeout=120)
        said["sent"][name] = (str(refused.value), time.perf_counter() - started)
    return said


def test_the_producer_refuses_every_hostile_file_in_one_line_before_uploading(clean, uploads):
    for name, (line, seconds) in uploads["cli"].items():
        assert line.startswith(REFUSALS[name]) and "\n" not in line, (name, line)
        assert seconds < 10, (name, seconds)
        assert not (clean.results_dir / "models" / f"cli-{name.replace('_', '-')}").exists()


def test_the_worker_refuses_every_hostile_file_sent_by_name_before_any_process_loads_it(clean, files, uploads):
    for name, (line, seconds) in uploads["sent"].items():
        assert line.startswith(WORKER_REFUSALS.get(name, REFUSALS[name])) and "\n" not in line, (name, line)
        assert seconds < 10, (name, seconds)
        assert not (clean.results_dir / "models" / f"sent-{name.replace('_', '-')}").exists()  # taken back
    assert not files[1].exists()  # no code from any file ran, anywhere
    assert list(clean.sandboxes.iterdir()) == []  # every disposable process's folder is gone


def test_the_serving_worker_is_the_clean_worker_it_was(clean, warm, uploads, tmp_path):
    producer, pid, rss = warm
    assert producer.register_model("accepted", file=_small_model(tmp_path / "accepted.keras", 4))["registered"]
    assert clean.processes["w1"].poll() is None and _pool_child(clean).pid == pid  # the same process, alive
    grown = _pool_child(clean).memory_info().rss - rss  # 26 refusals and a registration later
    assert grown < 32 * 2**20, f"the serving process grew by {grown / 2**20:.0f} MB"
    job = PINNED["shapes_channel"]  # shapes_cnn: a model this worker had not built
    result = producer.enqueue(job["fields"]).wait(timeout=300)
    assert pinned_png_sha256(clean.results_dir / result.image) == pinned(job["png_sha256"])


def test_a_file_changed_in_the_store_after_registration_is_refused_not_loaded(clean, warm, tmp_path):
    producer = warm[0]
    keras.utils.set_random_seed(5)
    pixels = keras.Input((12, 12, 3))
    first, second = tmp_path / "first.keras", tmp_path / "second.keras"
    keras.Model(pixels, keras.layers.Conv2D(2, 3, name="maps")(pixels)).save(first)
    keras.Model(pixels, keras.layers.Conv2D(2, 3, name="maps", use_bias=False)(pixels)).save(second)
    version = producer.register_model("swapped", file=first)["sha256"]
    stored = clean.results_dir / "models" / "swapped" / version / MODEL_FILE
    stored.write_bytes(second.read_bytes())  # another system writes to the store
    job = producer.enqueue({"model": "swapped", "layer": "maps", "feature": 0, "iterations": 2, "seed": 1})
    with pytest.raises(Exception) as failed:
        job.wait(timeout=120)
    assert str(failed.value) == (f"file: the stored model.keras of swapped is not the file registered as "
                                 f"{version[:12]} (it changed in the store); register it again")


def test_a_bomb_past_the_static_check_meets_the_disposable_processs_memory_limit(clean, warm, tmp_path):
    """A Dense layer of 2**26 units whose weights file declares exactly those shapes: only the parameter bound
    tells it from a big model, and this worker's is raised. Its process runs out of its memory; the worker does
    not."""
    producer, pid, _ = warm
    path = hostile.consistent_dense_bomb(tmp_path, tmp_path / "code-ran.txt")
    version = registry.version_of_file(path)
    producer.registry.store.put(producer.registry.key("quiet-bomb", version), MODEL_FILE, path.read_bytes())
    sent = producer.app.send_task("featurevis.register_model", kwargs={
        "name": "quiet-bomb", "sha256": version, "source": {"file": MODEL_FILE}, "preprocess": None,
        "class_names": None})
    with pytest.raises(ModelRefused) as refused:
        sent.get(timeout=300)
    assert str(refused.value) == (f"file: loading it needs more than {SANDBOX_MB} MB of memory "
                                  f"(FEATUREVIS_SANDBOX_MEMORY_MB); refused")
    assert _pool_child(clean).pid == pid and _pool_child(clean).memory_info().rss < 3 * 2**30
    assert list(clean.sandboxes.iterdir()) == []
