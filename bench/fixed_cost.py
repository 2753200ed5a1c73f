"""Part 7b of `make bench` (`--efficiency`, or `--fixed-cost` alone): a job's fixed cost, everything but its
climb, in milliseconds.

For the default job (30 iterations, gradient ascent, untrained InceptionV3) at conv_id 5 and at the logits, on
a warm worker (the step compiled), median of a few jobs from enqueue to SUCCESS. The worker times its own
pieces (meta.json's `timings`): the climb (`optimize_s` less `predictions_s`), the class predictions the
render loop makes on the way (`predictions_s`), and the final read, the pictures' classes and the scores' held-out
values in one pass, with the quality block (`scores_s`). What it cannot time in the
meta.json it writes, the result's files and the gallery, is timed here in this process on the job's own
result; the rest is `queue_and_celery`: enqueue, delivery, the task's wiring, the result through Redis.
The goal (issue 29): the fixed cost, the whole job less its climb, at most 100 ms at conv_id 5 on 2 cores.
"""
from __future__ import annotations

import tempfile
from types import SimpleNamespace

from bench.registration import median_seconds
from featurevis import contract, gallery
from featurevis.store import ResultStore

MODEL, ITERATIONS, FEATURE = "inception_v3_untrained", 30, 1
TARGETS = {"conv5": 5, "logits": None}
GOAL_MS = 100


def breakdown(service, factory, target, repeats: int) -> dict:
    """Milliseconds of each piece of one job at `target` (a conv_id, or None for the logits)."""
    from featurevis import batch
    from worker import tasks

    service.job(target, FEATURE, ITERATIONS, MODEL)  # the worker's step for it is compiled
    jobs = sorted((service.job(target, FEATURE, ITERATIONS, MODEL) for _ in range(repeats)), key=lambda job: job[0])
    job_s, meta = jobs[len(jobs) // 2]
    timings = meta.timings
    spec = contract.normalize({"model": MODEL, "conv_id": target, "feature": FEATURE, "iterations": ITERATIONS,
                               "seed": 1} if target is not None else
                              {"model": MODEL, "class": FEATURE, "iterations": ITERATIONS, "seed": 1})
    rendered = batch.run(factory, [spec], lambda progress: None)
    publisher = SimpleNamespace(request=SimpleNamespace(hostname="bench"))
    with tempfile.TemporaryDirectory() as folder:
        store = ResultStore(folder)
        files_s = median_seconds(lambda: tasks.publish(publisher, store, rendered), repeats)
        gallery_s = median_seconds(lambda: gallery.try_rebuild(store), repeats)
    climb_s = timings.optimize_s - timings.predictions_s
    pieces = {"predictions": timings.predictions_s, "final_read": timings.scores_s, "files": files_s,
              "gallery": gallery_s}
    pieces["queue_and_celery"] = job_s - climb_s - sum(pieces.values())
    return {"job_ms": job_s * 1000, "climb_ms": climb_s * 1000, "fixed_ms": (job_s - climb_s) * 1000,
            **{f"{name}_ms": seconds * 1000 for name, seconds in pieces.items()}}


PIECES = (("predictions", "predictions on the way"), ("final_read", "final read and scores"), ("files", "files"),
          ("gallery", "gallery"), ("queue_and_celery", "queue and Celery"))


def run(service, factory, repeats: int = 5) -> dict:
    rows = {name: breakdown(service, factory, target, repeats) for name, target in TARGETS.items()}
    for name, row in rows.items():
        pieces = ", ".join(f"{label} {row[key + '_ms']:.0f}" for key, label in PIECES)
        print(f"  {name}: job {row['job_ms']:.0f} ms = climb {row['climb_ms']:.0f} + fixed {row['fixed_ms']:.0f} "
              f"({pieces})", flush=True)
    return rows


def print_rows(results: dict) -> None:
    for name, row in results.get("fixed_cost", {}).items():
        goal = f"<= {GOAL_MS}" if name == "conv5" else ""
        labels = " / ".join(label for _, label in PIECES)
        pieces = " / ".join(f"{row[key + '_ms']:.0f}" for key, _ in PIECES)
        print(f"| fixed cost of a job, {name}, ms ({labels}) | {row['fixed_ms']:.0f} ({pieces}) | {goal} |")
