"""`make quality-defaults`: the robust method's settings, swept, so its defaults rest on scores.

Each setting (Adam's learning rate x how far the transforms move the image) is
scored as `make quality` scores the methods:
- shapes_cnn, 10 classes x 5 seeds: does the judge (registry.JUDGES, shapes_judge) see the target class
  (transferability), and the held-out robustness;
- inception_v3_untrained at conv_id 50, 2 features: held-out robustness and
  specificity (the hard layer: the robust method's weakest figures are there).
The seeds are not `make quality`'s, so the comparison there does not score the
settings on the pictures they were picked by. Writes quality/defaults.json.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from featurevis import registry, scoring
from featurevis.factory import ModelFactory, target_network
from featurevis.optvis import objectives, render, robust, transform

ROOT = Path(__file__).resolve().parent.parent

SEEDS = (100, 101, 102, 103, 104)  # make quality uses 0-4
SHAPES_ITERATIONS = 100
INCEPTION_ITERATIONS = 30
LEARNING_RATES = (0.02, robust.LEARNING_RATE, 0.1)
MOVES = {  # name -> how far the transforms move an image of that size
    "none": lambda size: transform.Moves(pad=0.0, jitter=0.0, scale=(1.0, 1.0), degrees=0.0, jitter_after=0.0),
    "lucid": transform.Moves.lucid,
    "2x lucid": lambda size: transform.Moves(
        pad=24 * size / 224, jitter=16 * size / 224, scale=(0.8, 1.2), degrees=20.0, jitter_after=8 * size / 224),
}


def scored(factory: ModelFactory, model: str, conv_id: int | None, learning_rate: float, moves: str,
           features: list[int], seeds: list[int], iterations: int) -> list[dict]:
    """One batch with a robust step compiled for these settings, scored like any job."""
    loaded = factory.model(model)
    network, objective = target_network(loaded, loaded.info.target_layer(conv_id), with_style=True)
    shape = loaded.info.input_shape
    step = robust.compile_step(network, loaded.preprocess, objective, shape, learning_rate, MOVES[moves](max(shape)))
    weights = objectives.weights_matrix([{feature: 1.0} for feature in features], loaded.info.feature_count(conv_id))
    ascent = render.run(step, seeds, weights, iterations, classify=loaded.classify)
    probe = scoring.feature_probe(network, loaded.preprocess, shape)
    return scoring.scores(probe, ascent.images, weights, ascent.predictions[-1].probabilities, conv_id is None,
                          factory.judge(model))


def setting(factory: ModelFactory, learning_rate: float, moves: str) -> dict:
    """One setting's scores; each model's step is compiled once, every class x seed in one batch."""
    classes = registry.builtin_info("shapes_cnn").classes
    shapes = scored(factory, "shapes_cnn", None, learning_rate, moves, list(range(classes)) * len(SEEDS),
                    [seed for seed in SEEDS for _ in range(classes)], SHAPES_ITERATIONS)
    deep = scored(factory, "inception_v3_untrained", 50, learning_rate, moves, [1, 2], list(SEEDS[:2]),
                  INCEPTION_ITERATIONS)
    return {
        "learning_rate": learning_rate, "moves": moves, "robustness": asdict(MOVES[moves](64)),
        "shapes_transferability": float(np.mean([row["judge_agrees"] for row in shapes])),
        "shapes_robustness": float(np.mean([row["robustness"] for row in shapes])),
        "conv50_robustness": float(np.mean([row["robustness"] for row in deep])),
        "conv50_specificity_z": float(np.mean([row["specificity_z"] for row in deep])),
    }


def main() -> int:
    began = time.perf_counter()
    factory = ModelFactory()
    print(f"{'rate':>5} {'moves':9} {'shapes judged':>13} {'shapes robust':>13} {'conv50 robust':>13} {'conv50 z':>8}")
    rows = []
    for learning_rate in LEARNING_RATES:
        for moves in MOVES:
            row = setting(factory, learning_rate, moves)
            rows.append(row)
            print(f"{learning_rate:5.2f} {moves:9} {row['shapes_transferability']:13.0%} "
                  f"{row['shapes_robustness']:13.3f} {row['conv50_robustness']:13.3f} "
                  f"{row['conv50_specificity_z']:8.2f}", flush=True)
    results = {"date": time.strftime("%Y-%m-%d"), "seeds": list(SEEDS), "settings": rows,
               "defaults": {"learning_rate": robust.LEARNING_RATE, "moves": "lucid"},
               "seconds": time.perf_counter() - began}
    (ROOT / "quality" / "defaults.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote quality/defaults.json in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
