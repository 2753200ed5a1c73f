"""Part 10 of `make bench` (`python -m bench.run --registration` alone): what keeping model files at arm's
length costs a registration, and what a refused bomb costs the process that refuses it.

For models people bring (tests/people_models.py: a nested MobileNetV2, a ResNet50 backbone of 94 MB, the
mini-Xception as `.keras` and as a Keras 2 `.h5`), in seconds, median of a few runs:
- the static check (featurevis/modelcheck.py), which the producer and the worker each run;
- the disposable process's description (featurevis/sandbox.py: a fresh interpreter, TensorFlow imported under
  its limits, the file loaded and described, a Keras 2 file converted), its peak resident memory;
- against what registration did before: load and describe in the worker's own warm process;
- a whole registration through a worker (Producer.register_model: upload, check, sandbox, publish).
For each hostile file of tests/hostile.py: the check's seconds and its peak Python allocation; and a bomb that
only a parameter bound could tell from a big model, in the sandbox with the bound lifted: seconds to its
refusal and the sandbox's memory limit that held it.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from featurevis import modelcheck, registry, sandbox, zoo
from featurevis.registry import ModelRefused
from tests import hostile, people_models

MODELS = ["mini_xception", "mini_xception_h5", "mobilenet_v2_backbone", "resnet50_backbone"]
RUNS = 3


def median_seconds(function, runs: int = RUNS) -> float:
    """The median of `runs` timed calls of `function` (also bench/fixed_cost.py's)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _request(name: str, path: Path) -> dict:
    upload = "model.h5" if modelcheck.file_format(path) == modelcheck.LEGACY_H5 else "model.keras"
    return {"name": name, "sha256": registry.version_of_file(path), "source": {"file": upload}, "preprocess": None,
            "class_names": None}


def _in_process(path: Path, request: dict) -> None:
    """What registration did before: the worker loaded the file itself and described it."""
    network = zoo.load_file(path)
    zoo.describe(network, request["name"], request["sha256"], request["source"], None)


def models(producer, folder: Path) -> dict:
    rows = {}
    for name in MODELS:
        path = people_models.build(name, folder)
        request = _request(name.replace("_", "-"), path)
        check_s = median_seconds(lambda: modelcheck.check_file(path))
        verdicts = []

        def describe():
            with sandbox.described(request, path) as verdict:
                verdicts.append(verdict)

        sandbox_s = median_seconds(describe)
        legacy = modelcheck.file_format(path) == modelcheck.LEGACY_H5
        before_s = None if legacy else median_seconds(lambda: _in_process(path, request))
        started = time.perf_counter()
        producer.register_model(f"bench-{request['name']}", file=path)
        rows[name] = {"file_mb": path.stat().st_size / 2**20, "check_s": check_s, "sandbox_s": sandbox_s,
                      "sandbox_peak_rss_mb": max(verdict.peak_rss_mb for verdict in verdicts),
                      "network_isolated": all(verdict.network_isolated for verdict in verdicts),
                      "in_process_load_and_describe_s": before_s,
                      "registration_s": time.perf_counter() - started}
        print(f"   {name}: check {check_s:.3f} s, sandbox {sandbox_s:.1f} s", flush=True)
    return rows


def bombs(folder: Path) -> dict:
    files = hostile.build_all(folder, folder / "code-ran.txt")
    rows = {}
    for name, path in files.items():
        tracemalloc.start()
        started = time.perf_counter()
        try:
            modelcheck.check_file(path)
            refused = None
        except ModelRefused as error:
            refused = str(error)
        seconds, (_, peak) = time.perf_counter() - started, tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows[name] = {"file_kb": path.stat().st_size / 1024, "check_s": seconds, "peak_mb": peak / 2**20,
                      "refused": refused}
    return rows


def quiet_bomb(folder: Path) -> dict:
    """The self-consistent Dense bomb, its parameter bound lifted: the sandbox's memory limit is what holds."""
    path = hostile.consistent_dense_bomb(folder, folder / "code-ran.txt")
    lifted = {"FEATUREVIS_MODEL_MAX_PARAMS": str(2**40)}
    saved = {key: os.environ.get(key) for key in lifted}
    os.environ.update(lifted)
    try:
        modelcheck.check_file(path)  # passes: only the bound would have refused it
        limits = sandbox.Limits.from_env()
        started = time.perf_counter()
        try:
            with sandbox.described(_request("quiet-bomb", path), path, limits):
                refused = None
        except ModelRefused as error:
            refused = str(error)
        return {"file_kb": path.stat().st_size / 1024, "sandbox_memory_limit_mb": limits.memory_mb,
                "seconds_to_refusal": time.perf_counter() - started, "refused": refused}
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.update({key: value})


def run(producer) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        print("10a. registration: the static check and the disposable process, per model file", flush=True)
        rows = {"models": models(producer, folder)}
        print("10b. refused files: the check's time and peak allocation; a bomb past the check, in the sandbox",
              flush=True)
        rows["bombs"] = bombs(folder)
        rows["quiet_bomb"] = quiet_bomb(folder)
    return rows


def print_rows(r: dict) -> None:
    if "registration" not in r:
        return
    registration = r["registration"]
    for name, row in registration["models"].items():
        before = row["in_process_load_and_describe_s"]
        print(f"| registration of {name} ({row['file_mb']:.1f} MB): static check / sandbox (peak RSS) / before, in "
              f"the worker / whole registration, s | {row['check_s']:.3f} / {row['sandbox_s']:.1f} "
              f"({row['sandbox_peak_rss_mb']:.0f} MB) / {'-' if before is None else f'{before:.1f}'} / "
              f"{row['registration_s']:.1f} | |")
    bombs = registration["bombs"]
    slowest = max(bombs.values(), key=lambda row: row["check_s"])
    largest = max(bombs, key=lambda name: bombs[name]["peak_mb"])
    print(f"| refused hostile files ({len(bombs)}): slowest check, s / largest peak allocation, MB ({largest}) | "
          f"{slowest['check_s']:.3f} / {bombs[largest]['peak_mb']:.1f} | |")
    quiet = registration["quiet_bomb"]
    print(f"| a bomb past the check: refused in the sandbox after, s (its memory limit, MB) | "
          f"{quiet['seconds_to_refusal']:.1f} ({quiet['sandbox_memory_limit_mb']}) | |")
