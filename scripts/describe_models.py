"""Writes featurevis/models/<description>.json, the built-in models' descriptions, from the live Keras models.

Run it in a fresh process (`.venv/bin/python scripts/describe_models.py`); the
producer validates jobs from these files without loading TensorFlow. Keys the
live model cannot give (a shipped model's `accuracy` and `trained_by`, written
by `scripts/train_shapes.py`) are kept as they are.
"""
import json

from featurevis import registry, zoo

# What registry.builtin_description adds per served name, and so leaves out of the shipped file.
PER_NAME = ("name", "sha256", "source", "keras_version")
CLASS_NAMES = {"inception_v3": "imagenet_classes.json", "shapes_cnn": "shapes_classes.json",
               "shapes_cnn_b": "shapes_classes.json", "shapes_judge": "shapes_classes.json",
               "shapes_judge_clean": "shapes_classes.json"}


def shipped_description(architecture: str, model) -> dict:
    """describe()'s fields that hold for the architecture whatever its weights, class names as a file name."""
    if architecture == "inception_v3":
        source, preprocess = {"keras_app": "InceptionV3"}, "inception"
    else:
        source, preprocess = {"architecture": architecture}, zoo.SHAPES_PREPROCESS
    described = zoo.describe(model, architecture, "", source, preprocess)
    kept = {key: value for key, value in described.items() if key not in PER_NAME}
    return {**kept, "class_names": CLASS_NAMES[architecture]}


def build(architecture: str):
    if architecture == "inception_v3":
        return zoo.application(architecture, "InceptionV3", "untrained")
    return zoo.ARCHITECTURES[architecture](None)


def write(architecture: str, described: dict) -> None:
    path = registry.SHIPPED_DIR / f"{architecture}.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    kept = {key: value for key, value in existing.items() if key not in described}
    path.write_text(json.dumps({**described, **kept}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    for architecture in CLASS_NAMES:
        write(architecture, shipped_description(architecture, build(architecture)))
