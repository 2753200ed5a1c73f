"""Trains shapes_cnn and shapes_cnn_b on featurevis.shapes; writes their weights and descriptions.

Run in a fresh process: `.venv/bin/python scripts/train_shapes.py` (about 4
minutes on 2 CPU cores). It writes, in featurevis/models/,
`<architecture>.weights.h5`, `<architecture>.json` (the catalog's description
plus `accuracy` on fresh data and `trained_by`) and `shapes_classes.json`.

Deterministic: data come from seeded generators, Keras' seeds are set per
model and TensorFlow's ops run deterministically, so a rerun on the same
software writes the same weights. The two models differ in architecture, seed
and training data, so shapes_cnn_b can judge shapes_cnn's pictures
independently.
"""
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from featurevis import catalog, shapes, zoo  # noqa: E402

EVAL_SEED = 2024  # used by no training run
EVAL_SAMPLES = 2000
BATCH_SIZE = 64
LEARNING_RATE = 3e-3


@dataclass(frozen=True)
class Recipe:
    seed: int  # Keras' initialization and shuffling, and the training data
    samples: int
    epochs: int


RECIPES = {
    "shapes_cnn": Recipe(seed=1, samples=16_000, epochs=4),
    "shapes_cnn_b": Recipe(seed=2, samples=16_000, epochs=3),  # a judge needs less: 98% here, 99.6% with 4
}


def train(architecture: str, recipe: Recipe) -> keras.Model:
    """Adam with a cosine-decayed learning rate on the pre-softmax logits."""
    keras.utils.set_random_seed(recipe.seed)
    images, labels = shapes.generate(recipe.samples, recipe.seed)
    model = zoo.ARCHITECTURES[architecture].build(None)
    steps = recipe.epochs * math.ceil(recipe.samples / BATCH_SIZE)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(zoo.ARCHITECTURES[architecture].preprocess(images), labels, batch_size=BATCH_SIZE,
              epochs=recipe.epochs, verbose=2)
    return model


def accuracy(architecture: str, model: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    logits = model.predict(zoo.ARCHITECTURES[architecture].preprocess(images), batch_size=256, verbose=0)
    return float(np.mean(logits.argmax(axis=1) == labels))


def write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=1) + "\n")
    print(f"wrote {path}")


def main() -> None:
    tf.config.experimental.enable_op_determinism()
    write_json(catalog.MODELS_DIR / zoo.ARCHITECTURES["shapes_cnn"].class_names, {
        "source": "featurevis/shapes.py CLASS_NAMES, in label order: a synthetic data set of shapes and textures",
        "names": list(shapes.CLASS_NAMES),
    })
    eval_images, eval_labels = shapes.generate(EVAL_SAMPLES, EVAL_SEED)
    for architecture, recipe in RECIPES.items():
        started = time.perf_counter()
        model = train(architecture, recipe)
        score = accuracy(architecture, model, eval_images, eval_labels)
        weights = zoo.shipped_weights_file(architecture)
        model.save_weights(weights)
        print(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB)")
        write_json(catalog.MODELS_DIR / f"{architecture}.json", {
            **zoo.description(architecture, model), "accuracy": score, "trained_by": "scripts/train_shapes.py",
        })
        print(f"{architecture}: accuracy {score:.4f} on {EVAL_SAMPLES} fresh samples (seed {EVAL_SEED}), "
              f"trained in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
