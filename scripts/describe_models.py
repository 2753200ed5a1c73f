"""Writes featurevis/models/<architecture>.json from the live Keras models.

Run in a fresh process (`.venv/bin/python scripts/describe_models.py`); the
producer validates jobs from these files without loading TensorFlow.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from featurevis import catalog, zoo  # noqa: E402


def describe(architecture: str) -> dict:
    model = zoo.ARCHITECTURES[architecture].build(None)
    layers = zoo.conv_layers_in_graph_order(model)
    return {
        "architecture": architecture,
        "input_shape": list(model.input_shape[1:]),
        "classes": int(model.output_shape[-1]),
        "class_names": "imagenet_classes.json",
        "conv_layers": [
            {"name": name, "channels": int(layer.filters)}
            for name, layer in zip(zoo.fresh_process_names(layers), layers)
        ],
    }


if __name__ == "__main__":
    for architecture in zoo.ARCHITECTURES:
        path = catalog.MODELS_DIR / f"{architecture}.json"
        path.write_text(json.dumps(describe(architecture), indent=1) + "\n")
        print(f"wrote {path}")
