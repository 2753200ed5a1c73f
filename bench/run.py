"""`make bench` (about 8 minutes on 2 cores) and `make bench-quick` (parts 1-4, under 2): the service against its baselines.

Measures, in one run on inception_v3_untrained at 299x299, and writes bench/results.json:
1. the tutorial's way (bench/tutorial.py) against a warm worker reached through Redis, per job of
   30 iterations, for conv_id 5, 50, 93 and the logits: `speedup_vs_tutorial`;
2. per-iteration time inside the worker against a bare loop doing the same math in this process
   (featurevis.optvis.render.run, predictions included): `service_over_bare`;
3. enqueue to the start of the first iteration on a warm worker, p50 and p95 over 20 jobs;
4. six features of one layer as one batched sweep against six separate jobs: `batched_6_speedup`;
5. the worker process's RSS after 50 jobs over 10 layers, against after the first job on each;
6. bf16 mixed precision against float32 on this CPU: speed, and how far the picture moves;
7. `job_efficiency`: a bare loop of only the objective's math (the compiled step, the same number of
   iterations, nothing else) over the whole job as a client sees it (enqueue to SUCCESS), for the
   default job at conv_id 5, 50, 93 and the logits, and shapes_cnn robust at 100 iterations; and the fixed cost
   of a job, everything but its climb, in milliseconds and broken down (bench/fixed_cost.py);
8. cold start: seconds from starting a worker process to its first result, with and without --preload;
9. the atlas: units per minute for one layer's 64 units (shapes_cnn conv_id 2) as single jobs, as an
   atlas's batched tasks and as a bare batched loop of the same math; and the bare loop's seconds per unit
   and iteration on inception_v3_untrained at batch 1, 4 and 16, from which an InceptionV3 atlas is costed;
10. registration (bench/registration.py): what the static check and the disposable process add to registering
   the models people bring, and what refusing a hostile file costs;
11. ONNX (bench/onnx_speed.py): a step on a ResNet-50 built from its ONNX graph against the same network built
   in Keras;
12. peers (bench/peers.py): Xplique and tf-keras-vis, installed into a folder of their own, each in its own
   process, against the bare loop and the service's whole job, on the same work.

`--efficiency` runs parts 7 and 8 alone (`--fixed-cost` 7b alone), `--atlas` part 9 alone, `--registration` part 10 alone, `--onnx` part 11,
`--peers` part 12.
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench import fixed_cost, onnx_speed, peers, registration
from bench.loop import compiled_loop
from devstack.stack import LocalStack
from featurevis import contract, registry
from featurevis.atlas import DEFAULT_BATCH
from featurevis.factory import ModelFactory, device_name
from featurevis.optvis import objectives, render
from featurevis.store import ResultStore
from producer import Producer

ROOT = Path(__file__).resolve().parent.parent

MODEL = "inception_v3_untrained"
ITERATIONS = 30
TARGETS = {"conv5": 5, "conv50": 50, "conv93": 93, "logits": None}
# name -> (model, target, method, iterations, feature): the default job at each layer the tutorial bench uses.
EFFICIENCY_JOBS = {"conv5": (MODEL, 5, "gradient_ascent", ITERATIONS, 1),
                   "conv50": (MODEL, 50, "gradient_ascent", ITERATIONS, 1),
                   "conv93": (MODEL, 93, "gradient_ascent", ITERATIONS, 1),
                   "logits": (MODEL, None, "gradient_ascent", ITERATIONS, 1),
                   "shapes_robust": ("shapes_cnn", None, "robust", 100, 3)}
ATLAS_MODEL, ATLAS_CONV_ID = "shapes_cnn", 2  # conv3: 64 units
# Iterations -> rounds of single jobs, atlas and bare loop in turn: 30 is the default job's, and 100 the robust
# renders' of make demo and make quality. The 2-core machines' speed drifts by more than the margins the atlas's
# goals are judged by, and two rounds left one drift in the figure; at 30 iterations, where the goal is closest
# and a round is short, one round's ratio moved by a tenth on a shared machine, so it gets more of them.
ATLAS_ROUNDS = {30: 9, 100: 5}
CURVE_TARGETS, CURVE_BATCHES, CURVE_ITERATIONS = {"conv5": 5, "conv50": 50, "conv93": 93}, (1, 4, 16), 3
# InceptionV3's 17,216 Conv2D units by where they sit, each third costed by the curve's layer in it.
INCEPTION_UNITS = {"conv5": 464, "conv50": 5456, "conv93": 11296}
ATLAS_COST_ITERATIONS = 512  # lucid's render length
TARGETS_GOALS = {"speedup_vs_tutorial": {"conv5": 6.0, "logits": 1.8}, "service_over_bare": 1.05,
                 "warm_start_latency_ms_p50": 50, "batched_6_speedup": 1.1, "rss_growth": 1.10,
                 "job_efficiency": 0.85, "atlas_over_bare": 0.8, "atlas_over_single": 3.0}
# Issue 29: at conv_id 5, on a CPU whose bare 30-iteration loop takes under FAST_BARE_S, a job's fixed cost may
# take at most a tenth of it.
FAST_JOB_EFFICIENCY, FAST_BARE_S = 0.9, 1.0


@contextmanager
def scratch_stack(preload: str):
    """A local stack in a temporary folder. Results that waited on its Redis are collected before it stops:
    they unsubscribe when collected, and after Redis is gone that fails at the interpreter's exit."""
    with tempfile.TemporaryDirectory() as folder, \
            LocalStack(results_dir=Path(folder) / "results", preload=preload, log_dir=Path(folder) / "logs") as stack:
        try:
            yield stack
        finally:
            gc.collect()


class Service:
    """A warm worker behind Redis, and the producer that reaches it."""

    def __init__(self, stack: LocalStack):
        self.producer = Producer(stack.redis_url, stack.results_dir)  # the workers' store: atlases are followed there
        self.store = ResultStore(stack.results_dir)
        self.seed = 1000

    def job(self, conv_id, feature, iterations=ITERATIONS, model=MODEL,
            method="gradient_ascent") -> tuple[float, contract.JobMeta]:
        """Wall seconds from enqueue to result, and the job's meta. A fresh seed: never a cached result."""
        self.seed += 1
        began = time.perf_counter()
        job = self.producer.enqueue({"model": model, "conv_id": conv_id, "feature": feature, "method": method,
                                     "iterations": iterations, "seed": self.seed})
        meta = self.meta(job, timeout=900)
        return time.perf_counter() - began, meta

    def meta(self, job, timeout: float) -> contract.JobMeta:
        """The finished job's meta.json, read as soon as its answer comes (pub/sub wake-up, no polling delay)."""
        answer = contract.JobSummary.model_validate(job.result.get(timeout=timeout))
        return contract.JobMeta.model_validate(self.store.read_meta(answer.key))


def tutorial_jobs(conv_id, repeats: int) -> list[float]:
    """Seconds per job the tutorial's way (bench/tutorial.py), in a process of its own."""
    printed = subprocess.run([sys.executable, str(ROOT / "bench" / "tutorial.py"), MODEL,
                              "logits" if conv_id is None else str(conv_id), str(ITERATIONS), str(repeats)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}).stdout
    return json.loads(printed.strip().splitlines()[-1])


def bare_seconds_per_iteration(factory: ModelFactory, conv_id, repeats: int) -> float:
    acquired = factory.acquire(MODEL, conv_id)
    weights = objectives.weights_matrix([{1: 1.0}], acquired.model.info.feature_count(conv_id))
    render.run(acquired.step, [1], weights, 2, classify=acquired.model.classify)  # warm
    runs = []
    for _ in range(repeats):
        began = time.perf_counter()
        render.run(acquired.step, [1], weights, ITERATIONS, classify=acquired.model.classify)
        runs.append((time.perf_counter() - began) / ITERATIONS)
    return statistics.median(runs)


def compare_with_tutorial(service: Service, factory: ModelFactory, targets: dict, repeats: int) -> dict:
    rows = {}
    for name, conv_id in targets.items():
        tutorial_s = statistics.median(tutorial_jobs(conv_id, repeats))
        service.job(conv_id, 0)  # the layer's first job compiles its step; later ones are what users wait for
        jobs = [service.job(conv_id, 1 + index) for index in range(repeats)]
        service_s = statistics.median(seconds for seconds, _ in jobs)
        in_worker = statistics.median(meta.timings.optimize_s / ITERATIONS for _, meta in jobs)
        bare = bare_seconds_per_iteration(factory, conv_id, repeats)
        rows[name] = {"tutorial_s": tutorial_s, "service_s": service_s, "speedup": tutorial_s / service_s,
                      "worker_s_per_it": in_worker, "bare_s_per_it": bare, "service_over_bare": in_worker / bare}
        print(f"  {name:7s} tutorial {tutorial_s:6.2f} s  service {service_s:5.2f} s  x{tutorial_s / service_s:4.1f}"
              f"   worker {in_worker * 1000:6.1f} ms/it  bare {bare * 1000:6.1f} ms/it", flush=True)
    return rows


def warm_start_latency(service: Service, jobs: int = 20) -> dict:
    service.job(5, 0, iterations=1)
    latencies = []
    for index in range(jobs):
        service.seed += 1
        sent = time.time()
        job = service.producer.enqueue({"model": MODEL, "conv_id": 5, "feature": index, "iterations": 1,
                                        "seed": service.seed})
        latencies.append((service.meta(job, timeout=120).timings.started_at - sent) * 1000)
    return {"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95))}


def batching(service: Service, iterations: int) -> dict:
    features = [1, 2, 3, 4, 5, 6]
    service.job(5, 0, iterations=1)
    service.seed += 1
    began = time.perf_counter()
    jobs = [service.producer.enqueue({"model": MODEL, "conv_id": 5, "feature": f, "iterations": iterations,
                                      "seed": service.seed}) for f in features]
    [job.result.get(timeout=900) for job in jobs]
    separate = time.perf_counter() - began
    service.seed += 1
    began = time.perf_counter()
    sweep = service.producer.sweep({"model": MODEL, "conv_id": 5, "features": features, "iterations": iterations,
                                    "seed": service.seed})
    sweep.result.get(timeout=900)
    batched = time.perf_counter() - began
    return {"separate_s": separate, "batched_s": batched, "speedup": separate / batched}


def memory(service: Service, iterations: int) -> dict:
    layers = list(range(0, 91, 10))  # 10 layers
    firsts = [service.job(conv_id, 0, iterations)[1] for conv_id in layers]
    pid = firsts[-1].worker.pid
    after_first = _rss_mb(pid)
    for round_ in range(1, 5):
        for conv_id in layers:
            service.job(conv_id, round_, iterations)
    after_50 = _rss_mb(pid)
    return {"rss_mb_after_first_job_per_layer": after_first, "rss_mb_after_50_jobs": after_50,
            "growth": after_50 / after_first}


def precision(conv_ids: list, iterations: int) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for conv_id in conv_ids:
            runs = {}
            for policy in ("float32", "mixed_bfloat16"):
                out = Path(folder) / f"{policy}-{conv_id}.npy"
                printed = subprocess.run([sys.executable, str(ROOT / "bench" / "precision.py"), policy, str(conv_id),
                                          str(iterations), str(out)], capture_output=True, text=True, check=True,
                                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}).stdout
                runs[policy] = {**json.loads(printed.strip().splitlines()[-1]), "image": np.load(out)}
            fp32, bf16 = runs["float32"]["image"], runs["mixed_bfloat16"]["image"]
            change = fp32 - 128.0
            rows[str(conv_id)] = {
                "fp32_ms_per_it": runs["float32"]["s_per_iteration"] * 1000,
                "bf16_ms_per_it": runs["mixed_bfloat16"]["s_per_iteration"] * 1000,
                "bf16_speedup": runs["float32"]["s_per_iteration"] / runs["mixed_bfloat16"]["s_per_iteration"],
                # How much of what the optimizer drew survives: 1.0 means the same picture.
                "picture_correlation": float(np.corrcoef(change.ravel(), (bf16 - 128.0).ravel())[0, 1]),
            }
            print(f"  {conv_id!s:6s} fp32 {rows[str(conv_id)]['fp32_ms_per_it']:6.1f} ms/it  "
                  f"bf16 {rows[str(conv_id)]['bf16_ms_per_it']:6.1f} ms/it  "
                  f"correlation {rows[str(conv_id)]['picture_correlation']:.3f}", flush=True)
    return rows


def bare_loop_seconds(factory: ModelFactory, model: str, target, method: str, iterations: int, feature: int,
                      repeats: int) -> float:
    """Seconds for `iterations` calls of the job's compiled step and nothing else: the limit a job can reach."""
    loop = compiled_loop(factory.acquire(model, target, method), target, feature, iterations)
    loop()
    runs = []
    for _ in range(repeats):
        began = time.perf_counter()
        loop()
        runs.append(time.perf_counter() - began)
    return statistics.median(runs)


def job_efficiency(service: Service, factory: ModelFactory, repeats: int) -> dict:
    """Bare loop over the whole job, enqueue to SUCCESS, on a warm worker (the layer's step already compiled).

    Jobs and bare loops take turns, so a slow spell of this shared machine weighs on both; the
    efficiency is the median of the pairs' ratios.
    """
    rows = {}
    for name, (model, target, method, iterations, feature) in EFFICIENCY_JOBS.items():
        service.job(target, feature, iterations, model, method)  # compiles the step; later jobs are what users wait for
        pairs = [(bare_loop_seconds(factory, model, target, method, iterations, feature, 1),
                  *service.job(target, feature, iterations, model, method)) for _ in range(repeats)]
        bare_s = statistics.median(bare for bare, _, _ in pairs)
        job_s = statistics.median(seconds for _, seconds, _ in pairs)
        optimize_s = statistics.median(meta.timings.optimize_s for _, _, meta in pairs)
        efficiency = statistics.median(bare / seconds for bare, seconds, _ in pairs)
        rows[name] = {"bare_s": bare_s, "job_s": job_s, "optimize_s": optimize_s, "efficiency": efficiency,
                      "outside_optimize_s": job_s - optimize_s}
        print(f"  {name:14s} bare {bare_s:6.3f} s  job {job_s:6.3f} s (optimize {optimize_s:6.3f} s)  "
              f"efficiency {efficiency:5.3f}", flush=True)
    return rows


def cold_start(stack: LocalStack, service: Service) -> dict:
    """Seconds from starting a worker process to its first result, with and without --preload.

    The job is queued first, so the figure is what autoscaling from zero costs the first job: the
    worker's start (TensorFlow's import), the model build, the step's first trace and the job itself.
    """
    stack.stop_process("w1")
    rows = {}
    for preload in ("", MODEL):
        service.seed += 1
        job = service.producer.enqueue({"model": MODEL, "conv_id": 5, "feature": 1, "iterations": ITERATIONS,
                                        "seed": service.seed})
        began = time.perf_counter()
        stack.preload = preload
        stack.start_worker("cold")
        meta = service.meta(job, timeout=600)
        seconds = time.perf_counter() - began
        stack.stop_process("cold")
        timings = meta.timings
        rows["preload" if preload else "no_preload"] = {
            "first_result_s": seconds, "model_load_s": timings.model_load_s, "compile_s": timings.compile_s,
            "optimize_s": timings.optimize_s}
        print(f"  {'--preload' if preload else 'no preload':11s} first result after {seconds:5.1f} s (model build "
              f"{timings.model_load_s:.1f} s, first trace {timings.compile_s:.1f} s, "
              f"job {timings.optimize_s:.1f} s)", flush=True)
    return rows


def atlas_throughput(service: Service, factory: ModelFactory, iterations: int) -> dict:
    """Units per minute for one layer's units: single jobs, the atlas's batched tasks, a bare batched loop.

    The worker's step for the layer is compiled and its dataset ranked beforehand (an atlas of one unit),
    as in an atlas's steady state. The bare loop is the same math, render.run over the units in
    batches of the atlas's size, and nothing else; it runs just before and just after each atlas, and the
    atlas is compared with the mean of the two.
    """
    info = registry.builtin_info(ATLAS_MODEL)
    layer = info.conv_layers[ATLAS_CONV_ID]
    units = list(range(layer.channels))
    producer = service.producer
    service.seed += 1
    producer.atlas({"model": ATLAS_MODEL, "layers": [layer.name], "units": 1, "iterations": 1,
                    "seed": service.seed}).wait(timeout=600)
    acquired = factory.acquire(ATLAS_MODEL, ATLAS_CONV_ID)
    batches = [units[first:first + DEFAULT_BATCH] for first in range(0, len(units), DEFAULT_BATCH)]

    def bare_loop() -> float:
        began = time.perf_counter()
        for batch in batches:
            weights = objectives.weights_matrix([{unit: 1.0} for unit in batch], layer.channels)
            render.run(acquired.step, [service.seed] * len(batch), weights, iterations)
        return time.perf_counter() - began

    runs = []
    for _ in range(ATLAS_ROUNDS[iterations]):
        service.seed += 1
        began = time.perf_counter()
        jobs = [producer.enqueue({"model": ATLAS_MODEL, "conv_id": ATLAS_CONV_ID, "feature": unit,
                                  "iterations": iterations, "seed": service.seed}) for unit in units]
        [job.result.get(timeout=900) for job in jobs]
        single = time.perf_counter() - began
        bare_before = bare_loop()
        service.seed += 1
        began = time.perf_counter()
        producer.atlas({"model": ATLAS_MODEL, "layers": [layer.name], "iterations": iterations,
                        "seed": service.seed}).wait(timeout=900)
        batched = time.perf_counter() - began
        runs.append({"single_s": single, "atlas_s": batched, "bare_s": (bare_before + bare_loop()) / 2})
    single, batched, bare = (statistics.median(run[name] for run in runs) for name in ("single_s", "atlas_s", "bare_s"))
    per_minute = {name: 60 * len(units) / seconds for name, seconds in
                  (("single_jobs", single), ("atlas", batched), ("bare_loop", bare))}
    # Each ratio within its round, then the median: a drift between rounds moves both sides of a round's ratio,
    # and the bare loop runs before and after the atlas, so a drift within the round moves it as the atlas.
    row = {"units": len(units), "layer": layer.name, "iterations": iterations, "batch": DEFAULT_BATCH,
           "units_per_minute": per_minute, "rounds": runs,
           "atlas_over_bare": statistics.median(run["bare_s"] / run["atlas_s"] for run in runs),
           "atlas_over_single": statistics.median(run["single_s"] / run["atlas_s"] for run in runs)}
    print(f"  {len(units)} units of {ATLAS_MODEL} {layer.name}, {iterations} iterations: units/min single jobs "
          f"{per_minute['single_jobs']:.0f}, atlas {per_minute['atlas']:.0f}, bare loop {per_minute['bare_loop']:.0f}; "
          "atlas / bare by round " + ", ".join(f"{run['bare_s'] / run['atlas_s']:.2f}" for run in runs), flush=True)
    return row


def batch_breakdown(factory: ModelFactory, iterations: int, repeats: int = 3) -> dict:
    """Where one atlas batch's time goes beside the bare loop, in this process (median of `repeats`): the bare
    climb; batch.run, the climb with its final prediction, each unit's scores and its share; and the results'
    files, published into a scratch store with one sync as an atlas batch publishes them, their folders and
    temporaries made here with them (a worker makes those during the climb: tasks.results_folders)."""
    from featurevis import batch
    from worker import tasks

    layer = registry.builtin_info(ATLAS_MODEL).conv_layers[ATLAS_CONV_ID]
    units = list(range(min(DEFAULT_BATCH, layer.channels)))
    step = factory.acquire(ATLAS_MODEL, ATLAS_CONV_ID).step
    weights = objectives.weights_matrix([{unit: 1.0} for unit in units], layer.channels)
    publisher = SimpleNamespace(request=SimpleNamespace(hostname="bench"))  # what tasks.publish reads of its task
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(500, 500 + repeats):
            specs = [contract.normalize({"model": ATLAS_MODEL, "conv_id": ATLAS_CONV_ID, "feature": unit,
                                         "iterations": iterations, "seed": seed}) for unit in units]
            began = time.perf_counter()
            render.run(step, [seed] * len(units), weights, iterations)
            bare = time.perf_counter() - began
            rendered = batch.run(factory, specs, lambda progress: None)
            scored = time.perf_counter() - began - bare
            tasks.publish(publisher, ResultStore(folder), rendered)
            runs.append((bare, scored, time.perf_counter() - began - bare - scored))
    bare, scored, files = (statistics.median(run[index] for run in runs) for index in range(3))
    print(f"  one {len(units)}-unit batch, {iterations} iterations, in this process: bare climb {bare:.3f} s, "
          f"batch.run {scored:.3f} s (with the final prediction and the scores), the results' files {files:.3f} s",
          flush=True)
    return {"units": len(units), "bare_climb_s": bare, "batch_run_s": scored, "files_s": files}


def batching_curve(factory: ModelFactory) -> dict:
    """The bare loop's seconds per unit and iteration on InceptionV3 at several batch sizes, and what the
    curve's best batch makes of an InceptionV3 atlas (gradient ascent, ATLAS_COST_ITERATIONS per unit)."""
    curve = {}
    for name, conv_id in CURVE_TARGETS.items():
        acquired = factory.acquire(MODEL, conv_id)
        curve[name] = {}
        for batch in CURVE_BATCHES:
            features = list(range(batch))
            weights = objectives.weights_matrix([{feature: 1.0} for feature in features],
                                                acquired.model.info.feature_count(conv_id))
            render.run(acquired.step, [1] * batch, weights, 1)
            began = time.perf_counter()
            render.run(acquired.step, [1] * batch, weights, CURVE_ITERATIONS)
            curve[name][str(batch)] = (time.perf_counter() - began) / CURVE_ITERATIONS / batch
        print(f"  {name}: ms per unit-iteration at batch " + ", ".join(
            f"{batch}: {seconds * 1000:.1f}" for batch, seconds in curve[name].items()), flush=True)
    hours = {str(batch): sum(INCEPTION_UNITS[name] * ATLAS_COST_ITERATIONS * curve[name][str(batch)]
                             for name in CURVE_TARGETS) / 3600 for batch in CURVE_BATCHES}
    return {"s_per_unit_iteration": curve, "inception_atlas_cpu_hours": hours,
            "inception_atlas_iterations": ATLAS_COST_ITERATIONS}


def atlas_only() -> int:
    results = {"date": time.strftime("%Y-%m-%d"), "cpu_cores": os.cpu_count()}
    with scratch_stack(ATLAS_MODEL) as stack:
        results["device"] = device_name()
        run_atlas(results, Service(stack), ModelFactory())
    written = ROOT / "bench" / "results-atlas.json"
    written.write_text(json.dumps(results, indent=1) + "\n")
    print_atlas(results)
    return 0


def run_atlas(results: dict, service: Service, factory: ModelFactory) -> None:
    print("9. the atlas: one layer's units as single jobs, as the atlas's batched tasks, as a bare batched loop",
          flush=True)
    results["atlas"] = {str(iterations): atlas_throughput(service, factory, iterations)
                        for iterations in ATLAS_ROUNDS}
    results["atlas_batch"] = {str(iterations): batch_breakdown(factory, iterations) for iterations in ATLAS_ROUNDS}
    print("9b. the bare loop's batching curve on inception_v3_untrained", flush=True)
    results["atlas_cost"] = batching_curve(factory)


def print_atlas(r: dict, header: bool = True) -> None:
    if "atlas" not in r:
        return
    if header:
        print("\n| measure | value | goal |\n|---|---|---|")
    goals = TARGETS_GOALS
    for iterations, row in r["atlas"].items():
        per_minute = row["units_per_minute"]
        print(f"| atlas units/min, {row['units']} units of {ATLAS_MODEL} {row['layer']}, {iterations} iterations: "
              f"single jobs / atlas / bare loop | {per_minute['single_jobs']:.0f} / {per_minute['atlas']:.0f} / "
              f"{per_minute['bare_loop']:.0f} | |")
        print(f"| atlas / bare loop, {iterations} iterations | {row['atlas_over_bare']:.2f} | "
              f">= {goals['atlas_over_bare']} |")
        print(f"| atlas / single jobs, {iterations} iterations | {row['atlas_over_single']:.2f} | "
              f">= {goals['atlas_over_single']} |")
    for iterations, row in r.get("atlas_batch", {}).items():
        print(f"| one {row['units']}-unit atlas batch, {iterations} iterations, in process: bare climb / batch.run / "
              f"files, s | {row['bare_climb_s']:.3f} / {row['batch_run_s']:.3f} / {row['files_s']:.3f} | |")
    for batch, hours in r["atlas_cost"]["inception_atlas_cpu_hours"].items():
        print(f"| InceptionV3 atlas, {r['atlas_cost']['inception_atlas_iterations']} iterations, bare loop at batch "
              f"{batch}: CPU worker-hours (estimate from the curve) | {hours:.0f} | |")


def _rss_mb(pid: int) -> float:
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def efficiency_only() -> int:
    results = {"date": time.strftime("%Y-%m-%d"), "cpu_cores": os.cpu_count()}
    with scratch_stack(MODEL) as stack:
        service = Service(stack)
        factory = ModelFactory()
        results["device"] = device_name()
        run_efficiency(results, stack, service, factory, repeats=5)
    written = ROOT / "bench" / "results-efficiency.json"
    written.write_text(json.dumps(results, indent=1) + "\n")
    print_efficiency(results)
    return 0


def run_efficiency(results: dict, stack: LocalStack, service: Service, factory: ModelFactory, repeats: int) -> None:
    print("7. job efficiency: bare loop of the step / the whole job, enqueue to SUCCESS", flush=True)
    results["efficiency"] = job_efficiency(service, factory, repeats)
    results["job_efficiency"] = {name: row["efficiency"] for name, row in results["efficiency"].items()}
    print("7b. a job's fixed cost: everything but its climb, broken down", flush=True)
    results["fixed_cost"] = fixed_cost.run(service, factory, repeats)
    print("8. cold start: a new worker's first result", flush=True)
    results["cold_start"] = cold_start(stack, service)


def registration_only() -> int:
    results = {"date": time.strftime("%Y-%m-%d"), "cpu_cores": os.cpu_count()}
    with scratch_stack("") as stack:
        results["registration"] = registration.run(Producer(stack.redis_url, stack.results_dir))
    written = ROOT / "bench" / "results-registration.json"
    written.write_text(json.dumps(results, indent=1) + "\n")
    print("\n| measure | value | goal |\n|---|---|---|")
    registration.print_rows(results)
    return 0


def onnx_only() -> int:
    results = {"date": time.strftime("%Y-%m-%d"), "cpu_cores": os.cpu_count(), "device": device_name(),
               "onnx": onnx_speed.run()}
    (ROOT / "bench" / "results-onnx.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n| measure | value | goal |\n|---|---|---|")
    onnx_speed.print_rows(results)
    return 0


def alone(part: str, measure, print_rows) -> int:
    """One part of the bench on its own scratch stack: `measure(service, factory)` -> results[part]."""
    results = {"date": time.strftime("%Y-%m-%d"), "cpu_cores": os.cpu_count(), "device": device_name()}
    with scratch_stack(MODEL) as stack:
        results[part] = measure(Service(stack), ModelFactory())
    (ROOT / "bench" / f"results-{part.replace('_', '-')}.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n| measure | value | goal |\n|---|---|---|")
    print_rows(results)
    return 0


def main() -> int:
    if "--peers" in sys.argv:
        return alone("peers", lambda service, factory: peers.run(service), peers.print_rows)
    if "--fixed-cost" in sys.argv:
        return alone("fixed_cost", fixed_cost.run, fixed_cost.print_rows)
    if "--registration" in sys.argv:
        return registration_only()
    if "--onnx" in sys.argv:
        return onnx_only()
    if "--efficiency" in sys.argv:
        return efficiency_only()
    if "--atlas" in sys.argv:
        return atlas_only()
    quick = "--quick" in sys.argv
    targets = {k: v for k, v in TARGETS.items() if not quick or k in ("conv5", "logits")}
    repeats = 1 if quick else 2
    results = {"date": time.strftime("%Y-%m-%d"), "quick": quick, "model": MODEL, "iterations": ITERATIONS,
               "cpu_cores": os.cpu_count()}
    with scratch_stack(MODEL) as stack:
        service = Service(stack)
        factory = ModelFactory()
        results["device"] = device_name()
        print(f"featurevis bench ({'quick' if quick else 'full'}) on {results['device']}, {os.cpu_count()} cores", flush=True)
        print("1-2. tutorial's way vs warm service, per job of 30 iterations; worker vs bare loop", flush=True)
        rows = compare_with_tutorial(service, factory, targets, repeats)
        results["per_target"] = rows
        results["speedup_vs_tutorial"] = {name: row["speedup"] for name, row in rows.items()}
        results["service_over_bare"] = {name: row["service_over_bare"] for name, row in rows.items()}
        print("3. warm-start latency, enqueue to first iteration", flush=True)
        results["warm_start_latency_ms"] = warm_start_latency(service, 10 if quick else 20)
        print("4. batching: six features of conv_id 5", flush=True)
        results["batching"] = batching(service, 10 if quick else ITERATIONS)
        results["batched_6_speedup"] = results["batching"]["speedup"]
        if not quick:  # bench-quick keeps to the speed figures, to stay under 2 minutes
            print("5. memory: 50 jobs over 10 layers", flush=True)
            results["memory"] = memory(service, 3)
            results["rss_mb_after_50_jobs"] = results["memory"]["rss_mb_after_50_jobs"]
            run_efficiency(results, stack, service, factory, repeats)
            run_atlas(results, service, factory)
            results["registration"] = registration.run(service.producer)
            print("12. peers: Xplique and tf-keras-vis on the same work, each in its own process", flush=True)
            results["peers"] = peers.run(service)
    if not quick:
        print("6. precision: bf16 mixed precision vs float32 (bare loop)", flush=True)
        results["precision"] = precision([5, 93, "logits"], ITERATIONS)
        print("11. ONNX: a ResNet-50 graph's step against its Keras twin's", flush=True)
        results["onnx"] = onnx_speed.run()
    written = ROOT / "bench" / ("results-quick.json" if quick else "results.json")
    written.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    print(f"\nwritten to {written.relative_to(ROOT)}")
    return 0


def print_table(r: dict) -> None:
    goals = TARGETS_GOALS
    print("\n| measure | value | goal |\n|---|---|---|")
    for name, value in r["speedup_vs_tutorial"].items():
        goal = goals["speedup_vs_tutorial"].get(name)
        print(f"| speedup_vs_tutorial.{name} | {value:.2f} | {'>= ' + str(goal) if goal else ''} |")
    for name, value in r["service_over_bare"].items():
        print(f"| service_over_bare.{name} | {value:.3f} | <= {goals['service_over_bare']} |")
    latency = r["warm_start_latency_ms"]
    print(f"| warm_start_latency_ms p50 / p95 | {latency['p50']:.1f} / {latency['p95']:.1f} | p50 <= 50 |")
    print(f"| batched_6_speedup | {r['batched_6_speedup']:.2f} | >= {goals['batched_6_speedup']} |")
    if "memory" in r:
        memory = r["memory"]
        print(f"| rss_mb_after_50_jobs (after first job per layer) | {memory['rss_mb_after_50_jobs']:.0f} "
              f"({memory['rss_mb_after_first_job_per_layer']:.0f}, x{memory['growth']:.3f}) | <= x1.10 |")
    print_efficiency(r, header=False)
    print_atlas(r, header=False)
    registration.print_rows(r)
    onnx_speed.print_rows(r)
    peers.print_rows(r)
    for conv_id, row in r.get("precision", {}).items():
        print(f"| bf16 speedup, conv {conv_id} (picture correlation) | {row['bf16_speedup']:.2f} "
              f"({row['picture_correlation']:.3f}) | keep fp32 unless faster and the same picture |")


def print_efficiency(r: dict, header: bool = True) -> None:
    if header:
        print("\n| measure | value | goal |\n|---|---|---|")
    for name, row in r.get("efficiency", {}).items():
        fast = name == "conv5" and row["bare_s"] < FAST_BARE_S
        goal = FAST_JOB_EFFICIENCY if fast else TARGETS_GOALS["job_efficiency"]
        print(f"| job_efficiency.{name} (bare {row['bare_s']:.2f} s / job {row['job_s']:.2f} s) | "
              f"{row['efficiency']:.3f} | >= {goal} |")
    fixed_cost.print_rows(r)
    for name, row in r.get("cold_start", {}).items():
        print(f"| cold start, {name.replace('_', ' ')}: worker start to first result | {row['first_result_s']:.1f} s "
              f"(build {row['model_load_s']:.1f}, trace {row['compile_s']:.1f}, job {row['optimize_s']:.1f}) | |")


if __name__ == "__main__":
    sys.exit(main())
