"""`make quality`: the robust method against the tutorial's gradient ascent, measured, not claimed.

1. shapes_cnn, 10 classes x 5 seeds, each method: does the judge, shapes_judge (another
   architecture, trained on another generator: featurevis/shapes_judge.py), classify the
   visualization as the target class (transferability)? And, for comparison, shapes_cnn_b,
   which learnt from shapes_cnn's own generator (its agreement overstates transferability);
2. held-out transform robustness (featurevis.scoring) of both methods on shapes_cnn
   (logits), on one channel of each shapes_cnn conv layer (with its specificity) and on
   inception_v3_untrained at conv_id 5, 50 and 93;
3. quality/results.json, and quality/contact_sheet.png: one row per class, one column per method.

It runs the worker's own functions (render.run, scoring.scores) in this process.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from featurevis import images, registry, scoring
from featurevis.factory import ModelFactory
from featurevis.optvis import objectives, render

ROOT = Path(__file__).resolve().parent.parent

METHODS = ("gradient_ascent", "robust")
SEEDS = (0, 1, 2, 3, 4)
SHAPES_ITERATIONS = 100
INCEPTION_ITERATIONS = 30
SAME_GENERATOR_MODEL = "shapes_cnn_b"  # trained on featurevis/shapes.py like shapes_cnn: not independent
CHANNEL = 1  # the channel of each shapes_cnn conv layer that part 2 climbs


def run(factory: ModelFactory, model: str, conv_id, method: str, features: list[int], seeds: list[int],
        iterations: int) -> tuple[np.ndarray, list[dict]]:
    """One batch, exactly as a worker would run it; the pictures and their quality scores."""
    acquired = factory.acquire(model, conv_id, method)
    info = acquired.model.info
    weights = objectives.weights_matrix([{feature: 1.0} for feature in features], info.feature_count(conv_id))
    ascent = render.run(acquired.step, seeds, weights, iterations, classify=acquired.model.classify)
    return ascent.images, scoring.scores(acquired.probe, ascent.images, weights, ascent.predictions[-1].probabilities,
                                         conv_id is None, factory.judge(model))


def shapes(factory: ModelFactory) -> tuple[dict, dict]:
    classes = registry.builtin_info("shapes_cnn").classes
    judge = registry.JUDGES["shapes_cnn"]
    same_generator = factory.model(SAME_GENERATOR_MODEL).classify
    summary, pictures = {}, {}
    for method in METHODS:
        rows, same = [], []
        for seed in SEEDS:
            batch, scores = run(factory, "shapes_cnn", None, method, list(range(classes)), [seed] * classes,
                                SHAPES_ITERATIONS)
            rows += scores
            same += list(same_generator(batch).numpy().argmax(axis=1) == np.arange(classes))
            if seed == SEEDS[0]:
                pictures[method] = batch
        assert all(row["judge"] == judge for row in rows)
        summary[method] = {
            "judge": judge,
            "transferability": float(np.mean([row["judge_agrees"] for row in rows])),
            "same_generator_model": SAME_GENERATOR_MODEL,
            "same_generator_agreement": float(np.mean(same)),
            "judge_probability_mean": float(np.mean([row["judge_probability"] for row in rows])),
            "robustness_mean": float(np.mean([row["robustness"] for row in rows])),
            "target_probability_mean": float(np.mean([row["target_probability"] for row in rows])),
            "per_class_transferability": [float(np.mean([rows[s * classes + c]["judge_agrees"]
                                                         for s in range(len(SEEDS))])) for c in range(classes)],
        }
        print(f"  shapes_cnn {method:16s} transferability to {judge} {summary[method]['transferability']:.0%}  "
              f"(to {SAME_GENERATOR_MODEL} {summary[method]['same_generator_agreement']:.0%})  "
              f"robustness {summary[method]['robustness_mean']:.3f}", flush=True)
    return summary, pictures


def shapes_channels(factory: ModelFactory) -> dict:
    """Channel CHANNEL of every shapes_cnn conv layer, 5 seeds, each method: robustness and specificity."""
    summary = {}
    for conv_id in range(len(registry.builtin_info("shapes_cnn").conv_layers)):
        for method in METHODS:
            _, scores = run(factory, "shapes_cnn", conv_id, method, [CHANNEL] * len(SEEDS), list(SEEDS),
                            SHAPES_ITERATIONS)
            summary[f"conv{conv_id}/{method}"] = _channel_means(f"shapes_cnn conv {conv_id} channel {CHANNEL} "
                                                                f"{method:16s}", scores)
    return summary


def inception(factory: ModelFactory) -> dict:
    summary = {}
    for conv_id in (5, 50, 93):
        for method in METHODS:
            _, scores = run(factory, "inception_v3_untrained", conv_id, method, [1, 2], [0, 1], INCEPTION_ITERATIONS)
            summary[f"conv{conv_id}/{method}"] = _channel_means(f"inception_v3_untrained conv {conv_id:2d} "
                                                                f"{method:16s}", scores)
    return summary


def _channel_means(label: str, scores: list[dict]) -> dict:
    """A channel job's scores over its seeds, printed as they come."""
    entry = {"robustness_mean": float(np.mean([row["robustness"] for row in scores])),
             "specificity_z_mean": float(np.mean([row["specificity_z"] for row in scores]))}
    print(f"  {label} robustness {entry['robustness_mean']:.3f}  specificity z {entry['specificity_z_mean']:.2f}",
          flush=True)
    return entry


def contact_sheet(pictures: dict) -> bytes:
    """Row c: class c by each method, left to right in METHODS order."""
    classes = len(pictures[METHODS[0]])
    return images.contact_sheet([pictures[method][c] for c in range(classes) for method in METHODS],
                                columns=len(METHODS))


def main() -> int:
    began = time.perf_counter()
    factory = ModelFactory()
    print(f"1. shapes_cnn: 10 classes x {len(SEEDS)} seeds, {SHAPES_ITERATIONS} iterations, judged by "
          f"{registry.JUDGES['shapes_cnn']} (and by {SAME_GENERATOR_MODEL}, same generator)", flush=True)
    shapes_summary, pictures = shapes(factory)
    print(f"2. held-out robustness and specificity: shapes_cnn channel {CHANNEL} of each conv layer, "
          f"{SHAPES_ITERATIONS} iterations; inception_v3_untrained, {INCEPTION_ITERATIONS} iterations", flush=True)
    results = {"date": time.strftime("%Y-%m-%d"), "shapes_cnn": shapes_summary,
               "shapes_cnn_channels": shapes_channels(factory), "inception_v3_untrained": inception(factory),
               "iterations": {"shapes_cnn": SHAPES_ITERATIONS, "inception_v3_untrained": INCEPTION_ITERATIONS},
               "class_names": list(registry.builtin_info("shapes_cnn").class_names), "seconds": None}
    (ROOT / "quality" / "contact_sheet.png").write_bytes(contact_sheet(pictures))
    results["seconds"] = time.perf_counter() - began
    (ROOT / "quality" / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote quality/results.json and quality/contact_sheet.png in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
