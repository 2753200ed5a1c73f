"""Builds and describes served models with Keras. TensorFlow side: imported by workers only.

A registered model comes from one of three sources:
- a user's `.keras` file (or the `.keras` a Keras 2 `.h5` was converted to),
  loaded only after the static check passes again (featurevis/admission.py)
  and with Keras' `safe_mode` besides; or a user's `.onnx` file, checked the
  same way and built op by op (featurevis/onnxgraph.py);
- a Keras Application by name, whose ImageNet weights go through Keras' own
  loading and cache (`$KERAS_HOME/models`), so a file an operator drops there is
  found and a machine with network access downloads it as Keras always does;
- the shapes architectures defined here, with weights shipped in
  `featurevis/models/` (written by `scripts/train_shapes.py`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import keras
import tensorflow as tf

from featurevis import admission, registry, shapes, targets
from featurevis.registry import LOGITS, ModelInfo, ModelRefused, WeightsUnavailable

UNTRAINED_SEED = 0

# The tutorial's names of InceptionV3's Conv2D operations, block by block, in the order its graph created
# them; Keras creates the same layers in the same order (conv2d, conv2d_1, ...): tests/test_registry_live.py.
_TUTORIAL_BLOCKS = {
    "35x35": ["conv", "tower/conv", "tower/conv_1", "tower_1/conv", "tower_1/conv_1", "tower_1/conv_2",
              "tower_2/conv"],
    "reduce_35": ["conv", "tower/conv", "tower/conv_1", "tower/conv_2"],
    "17x17": ["conv", "tower/conv", "tower/conv_1", "tower/conv_2", "tower_1/conv", "tower_1/conv_1",
              "tower_1/conv_2", "tower_1/conv_3", "tower_1/conv_4", "tower_2/conv"],
    "reduce_17": ["tower/conv", "tower/conv_1", "tower_1/conv", "tower_1/conv_1", "tower_1/conv_2", "tower_1/conv_3"],
    "8x8": ["conv", "tower/conv", "tower/mixed/conv", "tower/mixed/conv_1", "tower_1/conv", "tower_1/conv_1",
            "tower_1/mixed/conv", "tower_1/mixed/conv_1", "tower_2/conv"],
}
_TUTORIAL_MIXED = ["35x35"] * 3 + ["reduce_35"] + ["17x17"] * 4 + ["reduce_17"] + ["8x8"] * 2


def inception_v3_tutorial_names() -> list[str]:
    """conv_names of the tutorial, without its `/Conv2D` suffix: conv, conv_1, ..., mixed/conv, ..."""
    names = ["conv"] + [f"conv_{i}" for i in range(1, 5)]
    for index, block in enumerate(_TUTORIAL_MIXED):
        names += [f"mixed{'' if index == 0 else f'_{index}'}/{name}" for name in _TUTORIAL_BLOCKS[block]]
    return names


TUTORIAL_NAMES = {"InceptionV3": inception_v3_tutorial_names}


@dataclass(frozen=True)
class ConvBlock:
    """Conv2D, ReLU, BatchNorm.

    The Conv2D itself is linear, as in InceptionV3, so maximizing one of its
    channels never starts on a dead ReLU. BatchNorm after the ReLU trains the
    shapes models to a higher accuracy in the same epochs (bench/RESULTS.md).
    """

    channels: int
    kernel: int
    stride: int = 1
    pool: bool = False  # 2x2 max-pooling after the block


SHAPES_INPUT = (shapes.SIZE, shapes.SIZE, 3)
SHAPES_CLASSES = len(shapes.CLASS_NAMES)


def _shapes_cnn(weights: str | None) -> keras.Model:
    """The shapes model jobs visualize: 3x3 kernels, 16-32-64-64 channels, max-pooling between."""
    blocks = [ConvBlock(16, 3, pool=True), ConvBlock(32, 3, pool=True), ConvBlock(64, 3, pool=True), ConvBlock(64, 3)]
    return _small_cnn("shapes_cnn", blocks, weights)


def _shapes_cnn_b(weights: str | None) -> keras.Model:
    """A second model of shapes_cnn's generator (its judge is _shapes_judge): other kernels (5x5, 3x3), strides
    instead of pooling, 12-24-48-96-96 channels, another seed and other training data."""
    blocks = [ConvBlock(12, 5, stride=2), ConvBlock(24, 5, stride=2), ConvBlock(48, 3), ConvBlock(96, 3, stride=2),
              ConvBlock(96, 3)]
    return _small_cnn("shapes_cnn_b", blocks, weights)


# The judges' architecture: a 5x5 first layer with pooling, then a strided 3x3 layer, 16-32-48-96 channels.
JUDGE_BLOCKS = (ConvBlock(16, 5, pool=True), ConvBlock(32, 3, pool=True), ConvBlock(48, 3, stride=2), ConvBlock(96, 3))


def _shapes_judge(weights: str | None) -> keras.Model:
    """The judge of shapes_cnn's class pictures, trained adversarially on another generator
    (featurevis/shapes_judge.py)."""
    return _small_cnn("shapes_judge", JUDGE_BLOCKS, weights)


def _shapes_judge_clean(weights: str | None) -> keras.Model:
    """A second judge: the same architecture and generator, trained on clean images only, as one of the judges
    outside the project was (issue 28)."""
    return _small_cnn("shapes_judge_clean", JUDGE_BLOCKS, weights)


def _small_cnn(name: str, blocks: Sequence[ConvBlock], weights: str | None) -> keras.Model:
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


# The architectures this repository defines and trains (scripts/train_shapes.py); they see pixels / 255.
ARCHITECTURES: dict[str, Callable[[str | None], keras.Model]] = {"shapes_cnn": _shapes_cnn,
                                                                  "shapes_cnn_b": _shapes_cnn_b,
                                                                  "shapes_judge": _shapes_judge,
                                                                  "shapes_judge_clean": _shapes_judge_clean}
SHAPES_PREPROCESS = "unit"

# How each Keras Application family expects its pixels (keras.applications.<family>.preprocess_input).
# The rest (Inception, Xception, MobileNet V1/V2, NASNet, ResNet V2) use "inception": x / 127.5 - 1.
APPLICATION_PREPROCESS = {"ResNet": "caffe", "VGG": "caffe", "DenseNet": "torch", "EfficientNet": "none",
                          "ConvNeXt": "none", "RegNet": "none", "MobileNetV3": "none"}


def application_preprocess(name: str) -> str:
    """The preprocessing a Keras Application was trained with."""
    if name.startswith("ResNet") and name.endswith("V2"):
        return "inception"
    return next((kind for family, kind in APPLICATION_PREPROCESS.items() if name.startswith(family)), "inception")


def keras_cache_dir() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")


def build(info: ModelInfo, models: registry.Registry) -> keras.Model:
    """A fresh Keras model for a registered one. A user's file is loaded only after the static check passes
    again on the very file its description names (admission.served_file)."""
    source = info.source
    if "keras_app" in source:
        return application(info.name, source["keras_app"], source["weights"])
    if "architecture" in source:
        path = registry.shipped_weights_file(source["architecture"])
        if not path.is_file():
            raise WeightsUnavailable(f"model {info.name}: weights file {path} is missing; "
                                     f"run scripts/train_shapes.py to write it")
        return ARCHITECTURES[source["architecture"]](str(path))
    return load_file(admission.served_file(models, info), source.get("input_size"))


def application(name: str, app: str, weights: str) -> keras.Model:
    """A Keras Application; "untrained" (or "none") weights are a fixed-seed random init, the same in every process."""
    constructor = getattr(keras.applications, app, None)
    if not callable(constructor) or not app[:1].isupper():
        raise ModelRefused(f"keras_app: {app!r} is not a Keras Application (e.g. InceptionV3, ResNet50, MobileNetV2)")
    if weights != "imagenet":
        keras.utils.set_random_seed(UNTRAINED_SEED)  # job ids stay meaningful across workers
        return constructor(weights=None)
    try:
        return constructor(weights="imagenet")
    except Exception as error:  # Keras raises a bare Exception on fetch failure
        file_name = _weights_file_name(error)
        raise WeightsUnavailable(
            f"model {name}: weights file {file_name} is not in {keras_cache_dir()} and could not be "
            f"downloaded ({_reason(error)}); put the file there (or set KERAS_HOME) and retry"
        ) from None


def load_file(path: str | os.PathLike, input_size: list[int] | None = None) -> keras.Model:
    """A model file that passed the static check (featurevis/modelcheck.py), with Keras' `safe_mode` besides;
    ModelRefused, one line, for any file Keras cannot load. Keras picks its reader by the file's suffix; an
    `.onnx` file is built by featurevis/onnxgraph.py (`input_size` fixes the height and width it leaves open)."""
    if str(path).endswith(".onnx"):
        return load_onnx(path, input_size)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - every failure to load is the file's fault
        raise ModelRefused(f"file: {_load_failure(error)}") from None
    if not isinstance(model, keras.Model):
        raise ModelRefused(f"file: holds a {type(model).__name__}, not a Keras model")
    return model


def load_onnx(path: str | os.PathLike, input_size: list[int] | None = None) -> keras.Model:
    """An ONNX file that passed the static check, as a Keras model of its nodes; ModelRefused, one line, where a
    node cannot be built (the node named)."""
    from featurevis import onnxcheck, onnxgraph  # onnx: the `onnx` extra, which workers install

    try:
        return onnxgraph.build(onnxcheck.parse(path), tuple(input_size) if input_size else None)
    except onnxgraph.NodeFailed as error:
        raise ModelRefused(f"file: {error}") from None


def _load_failure(error: Exception) -> str:
    text = " ".join(str(error).split())
    if rebuild := re.search(r"Error when deserializing class '(\w+)' using config=\{'name': '([^']+)'", text):
        reason = re.search(r"Exception encountered: (.*)$", text)
        return (f"Keras {keras.__version__} cannot rebuild layer {rebuild.group(2)} ({rebuild.group(1)}) of this "
                f"file{': ' + reason.group(1)[:160] if reason else ''}")
    if "Lambda" in text:
        return "has a Lambda layer, whose code Keras' safe_mode refuses to run; rebuild it from built-in layers"
    if match := re.search(r"[Cc]ould not locate (?:class|function) '([^']+)'", text):
        return f"uses {match.group(1)}, a custom object; only Keras' built-in layers can be registered"
    if "zip" in text.lower() or "not a valid" in text.lower() or "archive" in text.lower() or "EOF" in text:
        return "is not a valid .keras file (not a zip archive with a model config, or truncated)"
    return f"could not be loaded as a Keras model ({text[:160]})"


def _weights_file_name(error: Exception) -> str:
    match = re.search(r"/([\w.-]+\.(?:h5|keras))", str(error))
    return match.group(1) if match else "(the ImageNet weights)"


def _reason(error: Exception) -> str:
    """The tail of Keras' fetch error ("[Errno -2] Name or service not known"), on one line."""
    return " ".join(str(error).split(" -- ")[-1].split())[:120] or type(error).__name__


def fresh_process_names(model: keras.Model, layers: list[targets.Found]) -> list[str]:
    """The names these layers would have had if the model were built first in a fresh process.

    Keras numbers auto-names per process and per layer type, so a model built
    after another starts at `conv2d_94`; subtracting the model's lowest number
    of each type undoes that. Names given explicitly are kept. (Keras
    Applications only: a file's names are the file's.)
    """
    lowest: dict[str, int] = {}
    for found in targets.all_layers(model):
        if _is_auto_named(found.layer):
            stem = _auto_name_stem(found.layer)
            lowest[stem] = min(lowest.get(stem, 1 << 30), _auto_name_number(found.layer.name))
    return [_auto_name(_auto_name_stem(found.layer), _auto_name_number(found.layer.name)
                       - lowest[_auto_name_stem(found.layer)]) if _is_auto_named(found.layer) else found.path
            for found in layers]


def _auto_name_stem(layer: keras.layers.Layer) -> str:
    """The name Keras gives a layer of this type before numbering it (its to_snake_case)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", type(layer).__name__)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _is_auto_named(layer: keras.layers.Layer) -> bool:
    return re.fullmatch(rf"{_auto_name_stem(layer)}(_\d+)?", layer.name) is not None


def _auto_name_number(name: str) -> int:
    stem, _, suffix = name.rpartition("_")
    return int(suffix) if stem and suffix.isdigit() else 0


def _auto_name(stem: str, number: int) -> str:
    return stem if number == 0 else f"{stem}_{number}"


def describe(model: keras.Model, name: str, version: str, source: dict, preprocess: str | dict | None,
             class_names: list[str] | None = None, default_preprocess: str = "unit") -> dict:
    """The registry's description of a live model (see featurevis/registry.py); ModelRefused where it cannot serve it.

    Every layer with (height, width, channels) maps is listed by its path, nested ones included, with the
    size it has when the whole model runs; conv_id counts the Conv2D layers of the whole model. The classes
    are what enters the final activation (targets.class_head); preprocessing layers at the input make
    `none` the default preprocessing."""
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise ModelRefused("file: the model must take one image input, (batch, height, width, channels)")
    height, width, channels = model.inputs[0].shape[1:]
    if not all(isinstance(size, int) for size in (height, width, channels)):
        raise ModelRefused(f"file: the input must have a fixed height, width and channels, got "
                           f"{tuple(model.inputs[0].shape[1:])}")
    spatial = targets.spatial_layers(model)
    if not spatial:
        raise ModelRefused("file: no layer outputs (batch, height, width, channels); nothing to visualize")
    head = targets.class_head(model)
    if class_names is not None and len(class_names) != head.classes:
        raise ModelRefused(f"class_names: the model has {head.classes} classes"
                           f"{f' ({head.reason})' if head.reason else ''}, got {len(class_names)} names")
    rename = "keras_app" in source  # built in this process: undo Keras' per-process numbering
    names = fresh_process_names(model, spatial) if rename else [targets.target_name(found) for found in spatial]
    conv_ids = {id(found.layer): index for index, found in enumerate(targets.conv_layers_in_creation_order(model))}
    tutorial = TUTORIAL_NAMES.get(source.get("keras_app"), lambda: [])()
    shapes = targets.outputs_of(model, [found.path for found in spatial])
    layers = []
    for found, layer_name in zip(spatial, names):
        conv_id = conv_ids.get(id(found.layer))
        shape = shapes[found.path].shape
        entry = {"name": layer_name, "type": targets.layer_type(found.layer), "channels": int(shape[-1]),
                 "height": shape[1], "width": shape[2], "conv_id": conv_id}
        if getattr(found.layer, "node", None):
            entry["node"] = found.layer.node  # the ONNX node's own name, which jobs may give instead
        if tutorial and conv_id is not None:
            entry["tutorial_name"] = tutorial[conv_id]
        layers.append(entry)
    if LOGITS in names:
        raise ModelRefused(f"file: a layer is named '{LOGITS}', which names the class target here; rename it")
    if unsafe := [name for name in names if any(part in (".", "..", "") or "\\" in part or "~" in part
                                                for part in name.split(targets.SEPARATOR))]:
        raise ModelRefused(f"file: layer name {unsafe[0]!r} cannot name a results folder; rename it")
    preprocessing = targets.preprocessing_layers(model)
    return {
        "name": name, "sha256": version, "source": source,
        "input_shape": [height, width, channels],
        "preprocess": registry.preprocess_from(preprocess, channels,
                                               "none" if preprocessing else default_preprocess).as_dict(),
        "preprocessing_layers": preprocessing,
        "classes": head.classes, "logits_layer": head.layer, "logits_type": head.value,
        "class_activation": head.activation, "no_classes": head.reason,
        "class_names": class_names or [f"class {index}" for index in range(head.classes)],
        "layers": layers, "keras_version": keras.__version__,
    }


def live_target(model: keras.Model, info: ModelInfo, name: str) -> keras.KerasTensor:
    """The output, in the model's graph, of the live layer a description's layer name stands for: the one at
    the same position among the spatial layers.

    Positions, not names, because a Keras Application built after another model
    in this process has shifted auto-names.
    """
    names = [layer.name for layer in info.layers]
    spatial = targets.spatial_layers(model)
    if len(spatial) != len(names):
        raise RuntimeError(f"model {info.name}: {len(spatial)} spatial layers, its description lists {len(names)}")
    return targets.output_of(model, spatial[names.index(info.layer(name).name)].path)


def preprocessor(preprocess: registry.Preprocess) -> Callable[[tf.Tensor], tf.Tensor]:
    """0..255 pixels -> what the network expects; it runs inside the compiled step, so gradients are in pixel space."""
    scale, offset = tf.constant(preprocess.scale, tf.float32), tf.constant(preprocess.offset, tf.float32)
    if preprocess.bgr:
        return lambda pixels: pixels[..., ::-1] * scale + offset
    return lambda pixels: pixels * scale + offset
