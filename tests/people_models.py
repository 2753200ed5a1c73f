"""The Keras models people bring to a feature-visualization service, built untrained and small.

Each builder is `name(path) -> path`: it builds the model with a fixed seed, saves it to `path` (a Keras 3
`.keras` file, except `mini_xception_h5`: a Keras 2 HDF5 file written by tf_keras, `.hdf5`) and returns the
path. `PEOPLE_MODELS` says what a test needs to know of each: the builder, an inner layer to target (a path of
layer names joined by `/`, from the outermost model's layers down: `mobilenetv2_0.35_32/block_6_expand` is
`model.get_layer("mobilenetv2_0.35_32").get_layer("block_6_expand")`), the class names, the kind of head,
and whether the model does its own input preprocessing.

Nothing is downloaded: every Keras Application is built with `weights=None`, at the smallest input it accepts.

Keras is imported inside the builders, not at the top: `mini_xception_h5` runs this file's mini-Xception in a
subprocess under tf_keras (Keras 2), and that subprocess must not import Keras 3 first.

Unnamed layers are named here as a fresh Keras process would name them (`conv2d`, `conv2d_1`, ...; see
`_AutoNames`): Keras numbers unnamed layers with a per-process counter, so a model built after others would
otherwise get different names each time and `inner_layer` could not be stated.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

Head = Literal["dense", "conv_gap", "flatten", "sigmoid"]


@dataclass(frozen=True)
class PeopleModel:
    build: Callable[[Path], Path]
    inner_layer: str  # layer names joined by "/", from the outer model's layers down to the target
    classes: list[str]
    head: Head  # dense: Dense on pooled features; conv_gap: Conv2D(k) -> GAP -> softmax; flatten: 1x1 conv + Flatten
    preprocessing_in_model: bool  # True: the model takes raw pixels (0-255) and scales them itself
    notes: str = ""
    suffix: str = ".keras"  # the file extension the builder expects of `path`
    loads_in_keras3: bool = True  # keras.saving.load_model(path) succeeds with Keras 3.15.1
    input_shape: tuple[int, int, int] = (32, 32, 3)


class _AutoNames:
    """The names a fresh Keras process (Keras 3 or tf_keras) gives unnamed layers: conv2d, conv2d_1, ..."""

    def __init__(self):
        self.seen: dict[str, int] = {}

    def __call__(self, prefix: str) -> str:
        count = self.seen.get(prefix, 0)
        self.seen[prefix] = count + 1
        return prefix if count == 0 else f"{prefix}_{count}"


def _check_suffix(path: Path, suffix: str) -> Path:
    path = Path(path)
    if path.suffix != suffix:
        raise ValueError(f"{path}: this builder writes a {suffix} file")
    return path


def _save(model, path: Path) -> Path:
    path = _check_suffix(path, ".keras")
    model.save(path)
    return path


def _seed(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras


# --- Keras Applications as a frozen-backbone fine-tuning base (the Keras transfer-learning guide's recipe) ---

def _fine_tuned(path: Path, seed: int, application: str, classes: int, name: str, rescaling: bool = False,
                dropout: bool = False, **options) -> Path:
    """A Keras Application (32x32, no top, untrained) frozen and called as one layer, then GAP, an optional
    Dropout(0.2) and a Dense softmax head: the guide's model, with its layer names fixed."""
    keras = _seed(seed)
    layers = keras.layers
    base = getattr(keras.applications, application)(input_shape=(32, 32, 3), include_top=False, weights=None,
                                                    **options)
    base.trainable = False
    inputs = keras.Input((32, 32, 3))
    # Keras 3's stand-in for keras.applications.mobilenet_v2.preprocess_input ([0, 255] -> [-1, 1]) in the model.
    x = layers.Rescaling(1 / 127.5, offset=-1, name="rescaling")(inputs) if rescaling else inputs
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    x = layers.Dropout(0.2, name="dropout")(x) if dropout else x
    outputs = layers.Dense(classes, activation="softmax", name="dense")(x)
    return _save(keras.Model(inputs, outputs, name=name), path)


def mobilenet_v2_backbone(path: Path) -> Path:
    """MobileNetV2 (alpha 0.35, 32x32) without its top, nested as one layer, GAP, Dense(5) softmax."""
    return _fine_tuned(path, 10, "MobileNetV2", 5, "flowers", alpha=0.35)


def mobilenet_v2_backbone_rescaling(path: Path) -> Path:
    """`mobilenet_v2_backbone` with `Rescaling(1/127.5, offset=-1)` before the base: takes 0-255 pixels."""
    return _fine_tuned(path, 10, "MobileNetV2", 5, "flowers", rescaling=True, alpha=0.35)


def efficientnet_b0_backbone(path: Path) -> Path:
    """EfficientNetB0 (32x32) without its top, nested; GAP, Dense(4) softmax. Rescaling(1/255) and an
    (un-adapted: mean 0, variance 1) Normalization are inside the base, so it takes 0-255 pixels."""
    return _fine_tuned(path, 11, "EfficientNetB0", 4, "weather")


def resnet50_backbone(path: Path) -> Path:
    """ResNet50 (32x32) without its top, nested; GAP, Dropout(0.2), Dense(3) softmax. ResNet50's caffe-style
    preprocess_input (BGR, mean subtracted) is left to the caller, as the guide's users do. About 24M
    parameters: a ~90 MB file however small the input."""
    return _fine_tuned(path, 12, "ResNet50", 3, "rock_paper_scissors", dropout=True)


# --- mini-Xception of oarriaga/face_classification (src/models/cnn.py), in Keras 3 and in tf_keras ---

EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
MINI_XCEPTION_INPUT = (64, 64, 1)  # train_emotion_classifier.py's input_shape; the published fer2013 file's


def _mini_xception_model(keras, input_shape=MINI_XCEPTION_INPUT, num_classes=7, l2_regularization=0.01):
    """mini_XCEPTION(input_shape, num_classes, l2_regularization) as the repository writes it, for the Keras
    module given (keras or tf_keras): only the names are explicit, the ones a fresh process gives."""
    layers = keras.layers
    name = _AutoNames()
    regularization = keras.regularizers.l2(l2_regularization)
    # The repository gives each SeparableConv2D kernel_regularizer=regularization. Keras 2 accepted it and
    # ignored it (a separable conv has depthwise and pointwise kernels, regularized by depthwise_/
    # pointwise_regularizer; tensorflow/tensorflow#41093); Keras 3 refuses the argument
    # (oarriaga/face_classification#165). So tf_keras gets it, as the original; Keras 3 gets none, which
    # builds the same model.
    separable = {"kernel_regularizer": regularization} if keras.__version__.startswith("2.") else {}

    # base
    img_input = keras.Input(input_shape)
    x = layers.Conv2D(8, (3, 3), strides=(1, 1), kernel_regularizer=regularization, use_bias=False,
                      name=name("conv2d"))(img_input)
    x = layers.BatchNormalization(name=name("batch_normalization"))(x)
    x = layers.Activation("relu", name=name("activation"))(x)
    x = layers.Conv2D(8, (3, 3), strides=(1, 1), kernel_regularizer=regularization, use_bias=False,
                      name=name("conv2d"))(x)
    x = layers.BatchNormalization(name=name("batch_normalization"))(x)
    x = layers.Activation("relu", name=name("activation"))(x)

    # modules 1 to 4: 16, 32, 64, 128 filters
    for filters in (16, 32, 64, 128):
        residual = layers.Conv2D(filters, (1, 1), strides=(2, 2), padding="same", use_bias=False,
                                 name=name("conv2d"))(x)
        residual = layers.BatchNormalization(name=name("batch_normalization"))(residual)

        x = layers.SeparableConv2D(filters, (3, 3), padding="same", use_bias=False,
                                   name=name("separable_conv2d"), **separable)(x)
        x = layers.BatchNormalization(name=name("batch_normalization"))(x)
        x = layers.Activation("relu", name=name("activation"))(x)
        x = layers.SeparableConv2D(filters, (3, 3), padding="same", use_bias=False,
                                   name=name("separable_conv2d"), **separable)(x)
        x = layers.BatchNormalization(name=name("batch_normalization"))(x)

        x = layers.MaxPooling2D((3, 3), strides=(2, 2), padding="same", name=name("max_pooling2d"))(x)
        x = layers.Add(name=name("add"))([x, residual])  # the repository's layers.add([x, residual])

    x = layers.Conv2D(num_classes, (3, 3), padding="same", name=name("conv2d"))(x)  # no regularizer (commented out)
    x = layers.GlobalAveragePooling2D(name=name("global_average_pooling2d"))(x)
    output = layers.Activation("softmax", name="predictions")(x)
    return keras.Model(img_input, output, name="mini_xception")


def mini_xception(path: Path) -> Path:
    """The mini-Xception emotion classifier (64x64 grayscale, 7 classes), Keras 3, `.keras`."""
    keras = _seed(13)
    return _save(_mini_xception_model(keras), path)


def _tf_keras_main(command: str, *args: str) -> None:
    """The subprocess side (tf_keras only; Keras 3 is never imported here)."""
    import tf_keras

    if command == "build":
        (path,) = args
        tf_keras.utils.set_random_seed(13)
        _mini_xception_model(tf_keras).save(path, save_format="h5")
    elif command == "predict":
        path, batch, out = args
        model = tf_keras.models.load_model(path, compile=False)
        np.save(out, model.predict(np.load(batch), verbose=0))
    else:
        raise SystemExit(f"unknown command {command!r}")


def _run_tf_keras(*args: str) -> None:
    """Run `_tf_keras_main(*args)` in a fresh interpreter that loads this file by its path."""
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('_people_models', sys.argv[1])\n"
            "module = sys.modules['_people_models'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "module._tf_keras_main(*sys.argv[2:])\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    env.pop("TF_USE_LEGACY_KERAS", None)
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve()), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"tf_keras subprocess {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")


def mini_xception_h5(path: Path) -> Path:
    """The same mini-Xception built and saved by tf_keras (Keras 2) in a subprocess: a legacy HDF5 `.hdf5`
    file, like the repository's published fer2013_mini_XCEPTION.102-0.66.hdf5."""
    path = _check_suffix(path, ".hdf5")
    _run_tf_keras("build", str(path))
    return path


def tf_keras_predict(path: Path, batch: np.ndarray, workdir: Path) -> np.ndarray:
    """tf_keras's own predictions of a Keras 2 file on `batch`, computed in a subprocess (files in workdir)."""
    workdir = Path(workdir)
    batch_file, out_file = workdir / "tf_keras_batch.npy", workdir / "tf_keras_predictions.npy"
    np.save(batch_file, np.asarray(batch, dtype="float32"))
    _run_tf_keras("predict", str(path), str(batch_file), str(out_file))
    return np.load(out_file)


# --- small hand-written CNNs ---

def squeezenet_style(path: Path) -> Path:
    """All-convolutional: a conv stem, two fire modules, then SqueezeNet's head: Dropout, Conv2D(6, 1)
    "conv10", ReLU, GAP, softmax. Fire layers are `fire2_squeeze1x1` etc.: Keras ports of SqueezeNet name them
    `fire2/squeeze1x1`, which Keras 3 refuses (no "/" in a layer name)."""
    keras = _seed(14)
    layers = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    for fire, (squeeze, expand) in ((2, (8, 16)), (3, (8, 16))):
        s = layers.Conv2D(squeeze, 1, activation="relu", name=f"fire{fire}_squeeze1x1")(x)
        left = layers.Conv2D(expand, 1, activation="relu", name=f"fire{fire}_expand1x1")(s)
        right = layers.Conv2D(expand, 3, padding="same", activation="relu", name=f"fire{fire}_expand3x3")(s)
        x = layers.Concatenate(name=f"fire{fire}_concat")([left, right])
    x = layers.Dropout(0.5, name="drop9")(x)
    x = layers.Conv2D(6, 1, name="conv10")(x)
    x = layers.ReLU(name="relu_conv10")(x)
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    outputs = layers.Activation("softmax", name="loss")(x)
    return _save(keras.Model(inputs, outputs, name="squeezenet_style"), path)


def flatten_head(path: Path) -> Path:
    """A CNN brought down to a 1x1 map, then `Conv2D(4, 1, activation="softmax")` and `Flatten`."""
    keras = _seed(15)
    layers = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for block, filters in enumerate((8, 16, 32), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{block}")(x)
        x = layers.MaxPooling2D(name=f"pool{block}")(x)
    x = layers.Conv2D(32, 4, activation="relu", name="conv_to_1x1")(x)  # 4x4 -> 1x1
    x = layers.Conv2D(4, 1, activation="softmax", name="class_conv")(x)
    outputs = layers.Flatten(name="flatten")(x)
    return _save(keras.Model(inputs, outputs, name="flatten_head"), path)


def multilabel_sigmoid(path: Path) -> Path:
    """A CNN with a multi-label head: Dense(6, sigmoid), each class scored on its own."""
    keras = _seed(16)
    layers = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    outputs = layers.Dense(6, activation="sigmoid", name="tags")(x)
    return _save(keras.Model(inputs, outputs, name="multilabel_sigmoid"), path)


def sequential_backbone(path: Path) -> Path:
    """Sequential([Input, features, GAP, Dense(3)]) where `features` is a Sequential whose first layer is the
    Functional `stem`: `features/conv_b` is one level down, `features/stem/conv_a` two."""
    keras = _seed(17)
    layers = keras.layers
    pixels = keras.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, padding="same", name="conv_a")(pixels)
    x = layers.BatchNormalization(name="bn_a")(x)
    stem = keras.Model(pixels, layers.ReLU(name="relu_a")(x), name="stem")
    features = keras.Sequential([keras.Input((32, 32, 3)), stem,
                                 layers.MaxPooling2D(name="pool_a"),
                                 layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_b"),
                                 layers.MaxPooling2D(name="pool_b")], name="features")
    model = keras.Sequential([keras.Input((32, 32, 3)), features,
                              layers.GlobalAveragePooling2D(name="global_average_pooling2d"),
                              layers.Dense(3, name="logits")], name="sequential_backbone")
    return _save(model, path)


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def preprocessing_inside(path: Path) -> Path:
    """A functional CNN on 48x48 0-255 pixels whose first layers are Resizing(32, 32), Rescaling(1/255) and
    Normalization with ImageNet's mean and variance given (no adapt)."""
    keras = _seed(18)
    layers = keras.layers
    inputs = keras.Input((48, 48, 3))
    x = layers.Resizing(32, 32, name="resizing")(inputs)
    x = layers.Rescaling(1 / 255, name="rescaling")(x)
    x = layers.Normalization(mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD], name="normalization")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    outputs = layers.Dense(5, activation="softmax", name="dense")(x)
    return _save(keras.Model(inputs, outputs, name="preprocessing_inside"), path)


PEOPLE_MODELS: dict[str, PeopleModel] = {
    "mobilenet_v2_backbone": PeopleModel(
        mobilenet_v2_backbone, "mobilenetv2_0.35_32/block_6_expand",
        ["daisy", "dandelion", "roses", "sunflowers", "tulips"], "dense", False,
        "Transfer-learning guide: frozen MobileNetV2 (alpha 0.35) called with training=False, GAP, Dense(5) "
        "softmax; the caller applies mobilenet_v2.preprocess_input ([-1, 1] pixels)."),
    "mobilenet_v2_backbone_rescaling": PeopleModel(
        mobilenet_v2_backbone_rescaling, "mobilenetv2_0.35_32/block_6_expand",
        ["daisy", "dandelion", "roses", "sunflowers", "tulips"], "dense", True,
        "As mobilenet_v2_backbone, with Rescaling(1/127.5, offset=-1) before the base (what Keras 3 users "
        "write for preprocess_input): takes 0-255 pixels."),
    "efficientnet_b0_backbone": PeopleModel(
        efficientnet_b0_backbone, "efficientnetb0/block3a_expand_conv",
        ["cloudy", "rain", "shine", "sunrise"], "dense", True,
        "Frozen EfficientNetB0 nested, GAP, Dense(4) softmax. Rescaling(1/255) and Normalization live inside "
        "the base (weights=None: mean 0, variance 1), so it takes 0-255 pixels."),
    "resnet50_backbone": PeopleModel(
        resnet50_backbone, "resnet50/conv3_block4_2_conv",
        ["rock", "paper", "scissors"], "dense", False,
        "Frozen ResNet50 nested, GAP, Dropout(0.2), Dense(3) softmax; caffe-style preprocess_input (BGR, "
        "ImageNet mean subtracted) is the caller's. ~24M parameters, the biggest file here."),
    "mini_xception": PeopleModel(
        mini_xception, "separable_conv2d_5", EMOTIONS, "conv_gap", False,
        "oarriaga/face_classification mini_XCEPTION(64x64x1, 7 classes, l2 0.01) in Keras 3; grayscale; the "
        "repository feeds pixels/255 (or *2-1). Final Conv2D(7, 3x3) 'conv2d_6', GAP, softmax 'predictions'.",
        input_shape=MINI_XCEPTION_INPUT),
    "mini_xception_h5": PeopleModel(
        mini_xception_h5, "separable_conv2d_5", EMOTIONS, "conv_gap", False,
        "The same mini-Xception built and saved by tf_keras (Keras 2) in a subprocess: a legacy HDF5 file. "
        "Keras 3.15.1's own load_model refuses it: tf_keras writes every SeparableConv2D's config with Conv's "
        "keys (groups, kernel_initializer, kernel_regularizer, kernel_constraint), and Keras 3's "
        "SeparableConv2D rejects them. Registration drops those unused keys (featurevis/describe_model.py) "
        "and serves it with tf_keras's predictions exactly.",
        suffix=".hdf5", input_shape=MINI_XCEPTION_INPUT, loads_in_keras3=False),
    "squeezenet_style": PeopleModel(
        squeezenet_style, "fire3_expand3x3",
        ["buildings", "forest", "glacier", "mountain", "sea", "street"], "conv_gap", False,
        "All-convolutional; SqueezeNet's head: Conv2D(6, 1) 'conv10', ReLU, GAP, softmax 'loss'. Its class "
        "scores are post-ReLU averages (no logits layer exists)."),
    "flatten_head": PeopleModel(
        flatten_head, "conv2", ["circle", "square", "triangle", "star"], "flatten", False,
        "Ends in Conv2D(4, 1, activation='softmax') 'class_conv' on a 1x1 map and Flatten: the softmax is "
        "inside a Conv2D, not an Activation layer."),
    "multilabel_sigmoid": PeopleModel(
        multilabel_sigmoid, "conv2", ["person", "car", "dog", "cat", "bicycle", "tree"], "sigmoid", False,
        "Multi-label: Dense(6, activation='sigmoid') 'tags'; scores do not sum to 1."),
    "sequential_backbone": PeopleModel(
        sequential_backbone, "features/stem/conv_a", ["cats", "dogs", "pandas"], "dense", False,
        "Sequential in a Sequential with a Functional inside: 'features/conv_b' at depth 1, "
        "'features/stem/conv_a' at depth 2. Linear Dense(3) 'logits' (no softmax)."),
    "preprocessing_inside": PeopleModel(
        preprocessing_inside, "conv2", ["apple", "banana", "cherry", "grape", "lemon"], "dense", True,
        "48x48 0-255 input; Resizing(32, 32), Rescaling(1/255), Normalization(ImageNet mean/variance given) "
        "as its first layers, then a small CNN, Dense(5) softmax.", input_shape=(48, 48, 3)),
}


def build(name: str, folder: Path) -> Path:
    """Build PEOPLE_MODELS[name] into folder as `<name><suffix>`; returns the path."""
    spec = PEOPLE_MODELS[name]
    return spec.build(Path(folder) / f"{name}{spec.suffix}")


def inner_layer(model, path: str):
    """The layer at `path` ("outer/inner/conv") of a loaded model, by get_layer at each level."""
    layer = model
    for part in path.split("/"):
        layer = layer.get_layer(part)
    return layer
