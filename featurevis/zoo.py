"""Builds served models with Keras. TensorFlow side: imported by workers only.

ImageNet weights go through Keras' own loading and cache (`$KERAS_HOME/models`),
so a file an operator drops there is found, and a machine with network access
downloads it as Keras always does. "Shipped" weights are files in
`featurevis/models/`, written by `scripts/train_shapes.py`, which trains the
very architectures defined here.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import tensorflow as tf

from featurevis import catalog, shapes
from featurevis.catalog import WeightsUnavailable

UNTRAINED_SEED = 0

# Keras' file name for each architecture's ImageNet weights (keras.applications).
IMAGENET_WEIGHT_FILES = {
    "inception_v3": "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
}


@dataclass(frozen=True)
class Architecture:
    # Takes weights as keras.applications does: None (random init), "imagenet" or a weights file's path.
    build: Callable[[str | None], keras.Model]
    # Maps 0..255 pixels to what the network expects; it runs inside the
    # compiled step so gradients are taken in pixel space.
    preprocess: Callable[[tf.Tensor], tf.Tensor]
    class_names: str  # the file in featurevis/models/ naming its classes


def _inception_v3(weights: str | None) -> keras.Model:
    return keras.applications.InceptionV3(weights=weights, classifier_activation=None)


SHAPES_INPUT = (shapes.SIZE, shapes.SIZE, 3)
SHAPES_CLASSES = len(shapes.CLASS_NAMES)


@dataclass(frozen=True)
class ConvBlock:
    """Conv2D, ReLU, BatchNorm.

    The Conv2D itself is linear, as in InceptionV3, so maximizing one of its
    channels never starts on a dead ReLU. With BatchNorm after the ReLU,
    shapes_cnn reached 98% accuracy in three epochs; before it, 91%.
    """

    channels: int
    kernel: int
    stride: int = 1
    pool: bool = False  # 2x2 max-pooling after the block


def _shapes_cnn(weights: str | None) -> keras.Model:
    """The shapes model jobs visualize: 3x3 kernels, 16-32-64-64 channels, max-pooling between."""
    blocks = [ConvBlock(16, 3, pool=True), ConvBlock(32, 3, pool=True), ConvBlock(64, 3, pool=True), ConvBlock(64, 3)]
    return _small_cnn("shapes_cnn", blocks, weights)


def _shapes_cnn_b(weights: str | None) -> keras.Model:
    """An independent judge of shapes_cnn's pictures: other kernels (5x5, 3x3), strides instead of pooling,
    12-24-48-96-96 channels, another seed and other training data."""
    blocks = [ConvBlock(12, 5, stride=2), ConvBlock(24, 5, stride=2), ConvBlock(48, 3), ConvBlock(96, 3, stride=2),
              ConvBlock(96, 3)]
    return _small_cnn("shapes_cnn_b", blocks, weights)


def _small_cnn(name: str, blocks: list[ConvBlock], weights: str | None) -> keras.Model:
    """Conv blocks, global average pooling and Dense(10) logits, no softmax: jobs maximize the logits.

    Every layer is named, so names never depend on what else the process built
    and a weights file always matches.
    """
    pixels = keras.Input(SHAPES_INPUT, name="pixels")
    x = pixels
    for number, block in enumerate(blocks, start=1):
        x = keras.layers.Conv2D(block.channels, block.kernel, strides=block.stride, padding="same",
                                name=f"conv{number}")(x)
        x = keras.layers.ReLU(name=f"relu{number}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{number}")(x)
        if block.pool:
            x = keras.layers.MaxPooling2D(name=f"pool{number}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="average")(x)
    model = keras.Model(pixels, keras.layers.Dense(SHAPES_CLASSES, name="logits")(x), name=name)
    if weights is not None:
        model.load_weights(weights)
    return model


ARCHITECTURES = {
    "inception_v3": Architecture(build=_inception_v3, preprocess=lambda x: x / 127.5 - 1.0,
                                 class_names="imagenet_classes.json"),
    "shapes_cnn": Architecture(build=_shapes_cnn, preprocess=lambda x: x / 255.0, class_names="shapes_classes.json"),
    "shapes_cnn_b": Architecture(build=_shapes_cnn_b, preprocess=lambda x: x / 255.0,
                                 class_names="shapes_classes.json"),
}


def shipped_weights_file(architecture: str) -> Path:
    """Where scripts/train_shapes.py writes an architecture's trained weights."""
    return catalog.MODELS_DIR / f"{architecture}.weights.h5"


def keras_cache_dir() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")


def build(info: catalog.ModelInfo) -> keras.Model:
    """A fresh Keras model for a served model, logits as output."""
    architecture = ARCHITECTURES[info.architecture]
    if info.untrained:
        # Same seed, same weights in every worker process: job ids stay meaningful.
        keras.utils.set_random_seed(UNTRAINED_SEED)
        return architecture.build(None)
    if info.weights == "shipped":
        return architecture.build(str(_shipped_weights(info)))
    try:
        return architecture.build(info.weights)
    except Exception as error:  # Keras raises a bare Exception on fetch failure
        file_name = IMAGENET_WEIGHT_FILES[info.architecture]
        raise WeightsUnavailable(
            f"model {info.name}: weights file {file_name} is not in {keras_cache_dir()} and could not be "
            f"downloaded ({_reason(error)}); put the file there (or set KERAS_HOME) and retry"
        ) from None


def _shipped_weights(info: catalog.ModelInfo) -> Path:
    path = shipped_weights_file(info.architecture)
    if not path.is_file():
        raise WeightsUnavailable(f"model {info.name}: weights file {path} is missing; "
                                 f"run scripts/train_shapes.py to write it")
    return path


def _reason(error: Exception) -> str:
    """The tail of Keras' fetch error ("[Errno -2] Name or service not known"), on one line."""
    return " ".join(str(error).split(" -- ")[-1].split())[:120] or type(error).__name__


def conv_layers_in_graph_order(model: keras.Model) -> list[keras.layers.Layer]:
    """The Conv2D layers in the order `conv_id` indexes."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def description(architecture: str, model: keras.Model) -> dict:
    """What featurevis/models/<architecture>.json says of a live model (see catalog)."""
    layers = conv_layers_in_graph_order(model)
    return {
        "architecture": architecture,
        "input_shape": list(model.input_shape[1:]),
        "classes": int(model.output_shape[-1]),
        "class_names": ARCHITECTURES[architecture].class_names,
        "conv_layers": [
            {"name": name, "channels": int(layer.filters)}
            for name, layer in zip(fresh_process_names(layers), layers)
        ],
    }


def fresh_process_names(layers: list[keras.layers.Layer]) -> list[str]:
    """The names these layers would have had in a fresh process.

    Keras numbers `conv2d`, `conv2d_1`, ... per process, so a model built after
    another starts at `conv2d_94`; subtracting the lowest number undoes that.
    Names given explicitly (the shapes models' `conv1`, ...) never shift and are kept.
    """
    if not all(re.fullmatch(r"conv2d(_\d+)?", layer.name) for layer in layers):
        return [layer.name for layer in layers]
    numbers = [_auto_name_number(layer.name) for layer in layers]
    offset = min(numbers)
    return [_auto_name(layers[0].name, number - offset) for number in numbers]


def _auto_name_number(name: str) -> int:
    stem, _, suffix = name.rpartition("_")
    return int(suffix) if stem and suffix.isdigit() else 0


def _auto_name(sample: str, number: int) -> str:
    stem = sample.rpartition("_")[0] if _auto_name_number(sample) else sample
    return stem if number == 0 else f"{stem}_{number}"
