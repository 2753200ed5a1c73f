"""What every process may know about a model without loading TensorFlow.

The producer validates jobs from these descriptions alone. Each architecture
has a JSON file in `featurevis/models/`, written from the live model by
`scripts/describe_models.py` (or, for the shipped shapes models, by
`scripts/train_shapes.py`, which adds their accuracy) and held equal to it by
`tests/test_catalog_live.py` and `tests/test_shapes.py`.

Conv2D layers are listed in graph order, which is what `conv_id` indexes. Their
names are the ones Keras gives in a fresh process; Keras' auto-names shift with
every model a process builds, so the worker maps names through this list and
never trusts the live names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"
LOGITS = "logits"

# Served model name -> (architecture description, weights).
# "untrained" weights are a fixed-seed random init: reproducible, needs no download.
# "shipped" weights are a trained file in this repository, featurevis/models/<architecture>.weights.h5.
REGISTRY: dict[str, tuple[str, str]] = {
    "inception_v3": ("inception_v3", "imagenet"),
    "inception_v3_untrained": ("inception_v3", "untrained"),
    "shapes_cnn": ("shapes_cnn", "shipped"),
    "shapes_cnn_b": ("shapes_cnn_b", "shipped"),
}


# A model whose class visualizations an independently trained model judges (quality.transferability).
JUDGES = {"shapes_cnn": "shapes_cnn_b"}


class WeightsUnavailable(RuntimeError):
    """A model's weights file is neither cached nor downloadable (nor, when shipped, in the repository).

    Defined here, TensorFlow-free, because Celery unpickles a task's exception
    in the worker's parent process: a class from the TF side would load
    TensorFlow there.
    """


@dataclass(frozen=True)
class ConvLayer:
    name: str
    channels: int


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    weights: str
    input_shape: tuple[int, int, int]
    classes: int
    conv_layers: tuple[ConvLayer, ...]
    class_names_file: str

    @property
    def untrained(self) -> bool:
        return self.weights == "untrained"

    def conv_id_of(self, layer_name: str) -> int | None:
        """conv_id of a named Conv2D layer; None when the name is not one."""
        for conv_id, layer in enumerate(self.conv_layers):
            if layer.name == layer_name:
                return conv_id
        return None

    def features_of(self, conv_id: int | None) -> int:
        """How many features a target has: its conv layer's channels, or the classes for the logits."""
        return self.classes if conv_id is None else self.conv_layers[conv_id].channels

    def class_names(self) -> list[str]:
        return _class_names(self.class_names_file)


def model_names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> ModelInfo:
    """The description of a served model; KeyError for an unknown name."""
    architecture, weights = REGISTRY[name]
    raw = _description(architecture)
    return ModelInfo(
        name=name,
        architecture=architecture,
        weights=weights,
        input_shape=tuple(raw["input_shape"]),
        classes=raw["classes"],
        conv_layers=tuple(ConvLayer(l["name"], l["channels"]) for l in raw["conv_layers"]),
        class_names_file=raw["class_names"],
    )


@lru_cache(maxsize=None)
def _description(architecture: str) -> dict:
    return json.loads((MODELS_DIR / f"{architecture}.json").read_text())


@lru_cache(maxsize=None)
def _class_names(file_name: str) -> list[str]:
    return json.loads((MODELS_DIR / file_name).read_text())["names"]
