"""Builds served models with Keras. TensorFlow side: imported by workers only.

Weights go through Keras' own loading and cache (`$KERAS_HOME/models`), so a
file an operator drops there is found, and a machine with network access
downloads it as Keras always does.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import keras
import tensorflow as tf

from featurevis import catalog
from featurevis.catalog import WeightsUnavailable

UNTRAINED_SEED = 0

# Keras' file name for each architecture's ImageNet weights (keras.applications).
IMAGENET_WEIGHT_FILES = {
    "inception_v3": "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
}


@dataclass(frozen=True)
class Architecture:
    build: Callable[[str | None], keras.Model]
    # Maps 0..255 pixels to what the network expects; it runs inside the
    # compiled step so gradients are taken in pixel space.
    preprocess: Callable[[tf.Tensor], tf.Tensor]


def _inception_v3(weights: str | None) -> keras.Model:
    return keras.applications.InceptionV3(weights=weights, classifier_activation=None)


ARCHITECTURES = {
    "inception_v3": Architecture(build=_inception_v3, preprocess=lambda x: x / 127.5 - 1.0),
}


def keras_cache_dir() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")


def build(info: catalog.ModelInfo) -> keras.Model:
    """A fresh Keras model for a served model, logits as output."""
    architecture = ARCHITECTURES[info.architecture]
    if info.untrained:
        # Same seed, same weights in every worker process: job ids stay meaningful.
        keras.utils.set_random_seed(UNTRAINED_SEED)
        return architecture.build(None)
    try:
        return architecture.build(info.weights)
    except Exception as error:  # Keras raises a bare Exception on fetch failure
        file_name = IMAGENET_WEIGHT_FILES[info.architecture]
        raise WeightsUnavailable(
            f"model {info.name}: weights file {file_name} is not in {keras_cache_dir()} and could not be "
            f"downloaded ({_reason(error)}); put the file there (or set KERAS_HOME) and retry"
        ) from None


def _reason(error: Exception) -> str:
    """The tail of Keras' fetch error ("[Errno -2] Name or service not known"), on one line."""
    return " ".join(str(error).split(" -- ")[-1].split())[:120] or type(error).__name__


def conv_layers_in_graph_order(model: keras.Model) -> list[keras.layers.Layer]:
    """The Conv2D layers in the order `conv_id` indexes."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def fresh_process_names(layers: list[keras.layers.Layer]) -> list[str]:
    """The auto-names these layers would have had in a fresh process.

    Keras numbers `conv2d`, `conv2d_1`, ... per process, so a model built after
    another starts at `conv2d_94`; subtracting the lowest number undoes that.
    """
    numbers = [_auto_name_number(layer.name) for layer in layers]
    offset = min(numbers)
    return [_auto_name(layers[0].name, number - offset) for number in numbers]


def _auto_name_number(name: str) -> int:
    stem, _, suffix = name.rpartition("_")
    return int(suffix) if stem and suffix.isdigit() else 0


def _auto_name(sample: str, number: int) -> str:
    stem = sample.rpartition("_")[0] if _auto_name_number(sample) else sample
    return stem if number == 0 else f"{stem}_{number}"
