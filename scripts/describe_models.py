"""Writes featurevis/models/<architecture>.json from the live Keras models.

Run in a fresh process (`.venv/bin/python scripts/describe_models.py`); the
producer validates jobs from these files without loading TensorFlow.
Keys the live model cannot give (a shipped model's `accuracy` and
`trained_by`, written by `scripts/train_shapes.py`) are kept as they are.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from featurevis import catalog, zoo  # noqa: E402


def describe(architecture: str) -> dict:
    return zoo.description(architecture, zoo.ARCHITECTURES[architecture].build(None))


def kept_keys(path: Path, described: dict) -> dict:
    """The keys of an existing description that describing the live model does not write."""
    existing = json.loads(path.read_text()) if path.exists() else {}
    return {key: value for key, value in existing.items() if key not in described}


if __name__ == "__main__":
    for architecture in zoo.ARCHITECTURES:
        path = catalog.MODELS_DIR / f"{architecture}.json"
        described = describe(architecture)
        path.write_text(json.dumps({**described, **kept_keys(path, described)}, indent=1) + "\n")
        print(f"wrote {path}")
