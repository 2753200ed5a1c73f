"""What each Keras layer a model file may hold outputs and weighs, computed from its config alone.

The static check (featurevis/modelcheck.py) reads a model's config before Keras
does: it needs every layer's output shape to follow the graph and every
layer's variables to count the parameters loading would allocate and to
compare them with what the weights file declares. This module is that table,
for the built-in layers an image model is made of; a layer missing here is a
layer the check refuses. Shapes include the batch dimension (None) and are
channels-last, the only layout the service serves. Pure Python: no Keras, no
TensorFlow, no NumPy.

`tests/test_modelcheck.py` holds every entry equal to what Keras itself builds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

Shape = tuple  # (None, height, width, channels): ints, None where the size is open


class ShapeError(ValueError):
    """A layer's config or inputs make no shape Keras could build; str() is the reason, without the layer."""


@dataclass(frozen=True)
class LayerSpec:
    """How a layer class maps its input shapes to its output shape, and to its variables' shapes."""

    output: Callable[[dict, list[Shape]], Shape]
    weights: Callable[[dict, list[Shape]], list[Shape]] = lambda config, shapes: []


def values(value):
    """A config value as plain JSON: Keras 3 writes some tuples as {"class_name": "__tuple__", ...}."""
    if isinstance(value, dict) and value.get("class_name") == "__tuple__":
        return [values(item) for item in value.get("config", {}).get("value", [])]
    if isinstance(value, list):
        return [values(item) for item in value]
    return value


def _int(value, field: str, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 2**31:
        raise ShapeError(f"{field} must be an integer in {low}..2^31, got {str(value)[:40]}")
    return value


def _pair(config: dict, field: str, default=None) -> tuple[int, int]:
    """kernel_size, strides, pool_size, dilation_rate: one integer or two."""
    value = values(config.get(field, default))
    if value is None:
        value = default
    if isinstance(value, int):
        value = [value, value]
    if not isinstance(value, list) or len(value) != 2:
        raise ShapeError(f"{field} must be one or two integers, got {str(value)[:40]}")
    return _int(value[0], field, 1), _int(value[1], field, 1)


def _channels_last(config: dict) -> None:
    if config.get("data_format") not in (None, "channels_last"):
        raise ShapeError(f"data_format {config.get('data_format')!r}: only channels_last models are served")


def _one(shapes: list[Shape], rank: int | None = 4) -> Shape:
    if len(shapes) != 1:
        raise ShapeError(f"takes one input, got {len(shapes)}")
    if rank is not None and len(shapes[0]) != rank:
        raise ShapeError(f"takes a rank-{rank} input, got shape {shown(shapes[0])}")
    return shapes[0]


def shown(shape: Shape) -> str:
    return "(" + ", ".join("None" if size is None else str(size) for size in shape) + ")"


def _known(size, what: str) -> int:
    if size is None:
        raise ShapeError(f"{what} must have a known size")
    return size


def _window(size, kernel: int, stride: int, padding: str, dilation: int = 1):
    """A sliding window's output length (convolutions and pooling)."""
    if padding not in ("valid", "same"):
        raise ShapeError(f"padding must be valid or same, got {str(padding)[:20]!r}")
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    extent = dilation * (kernel - 1) + 1
    if size < extent:
        raise ShapeError(f"a window of {extent} does not fit an input of {size}")
    return (size - extent) // stride + 1


def _conv_output(config: dict, shapes: list[Shape], channels: int) -> Shape:
    _channels_last(config)
    batch, height, width, _ = _one(shapes)
    kernel, stride, dilation = _pair(config, "kernel_size"), _pair(config, "strides", 1), _pair(config, "dilation_rate", 1)
    padding = config.get("padding", "valid")
    return (batch, _window(height, kernel[0], stride[0], padding, dilation[0]),
            _window(width, kernel[1], stride[1], padding, dilation[1]), channels)


def _bias(config: dict, size: int) -> list[Shape]:
    return [(size,)] if config.get("use_bias", True) else []


def _input_channels(shapes: list[Shape]) -> int:
    return _known(_one(shapes)[-1], "the input's channels")


def _conv2d(config: dict, shapes: list[Shape]) -> Shape:
    return _conv_output(config, shapes, _int(config.get("filters"), "filters", 1))


def _conv2d_weights(config: dict, shapes: list[Shape]) -> list[Shape]:
    filters, groups = _int(config.get("filters"), "filters", 1), _int(config.get("groups", 1), "groups", 1)
    channels = _input_channels(shapes)
    if channels % groups or filters % groups:
        raise ShapeError(f"groups {groups} must divide the {channels} input channels and the {filters} filters")
    return [(*_pair(config, "kernel_size"), channels // groups, filters), *_bias(config, filters)]


def _depthwise(config: dict, shapes: list[Shape]) -> Shape:
    multiplier = _int(config.get("depth_multiplier", 1), "depth_multiplier", 1)
    return _conv_output(config, shapes, _input_channels(shapes) * multiplier)


def _depthwise_weights(config: dict, shapes: list[Shape]) -> list[Shape]:
    multiplier, channels = _int(config.get("depth_multiplier", 1), "depth_multiplier", 1), _input_channels(shapes)
    return [(*_pair(config, "kernel_size"), channels, multiplier), *_bias(config, channels * multiplier)]


def _separable_weights(config: dict, shapes: list[Shape]) -> list[Shape]:
    multiplier, channels = _int(config.get("depth_multiplier", 1), "depth_multiplier", 1), _input_channels(shapes)
    filters = _int(config.get("filters"), "filters", 1)
    return [(*_pair(config, "kernel_size"), channels, multiplier), (1, 1, channels * multiplier, filters),
            *_bias(config, filters)]


def _transpose(config: dict, shapes: list[Shape]) -> Shape:
    _channels_last(config)
    batch, height, width, _ = _one(shapes)
    kernel, stride = _pair(config, "kernel_size"), _pair(config, "strides", 1)
    if values(config.get("output_padding")) is not None or _pair(config, "dilation_rate", 1) != (1, 1):
        raise ShapeError("output_padding and dilation_rate are not served in Conv2DTranspose")
    padding = config.get("padding", "valid")
    if padding not in ("valid", "same"):
        raise ShapeError(f"padding must be valid or same, got {str(padding)[:20]!r}")

    def grown(size, k, s):
        return None if size is None else size * s if padding == "same" else size * s + max(k - s, 0)

    return batch, grown(height, kernel[0], stride[0]), grown(width, kernel[1], stride[1]), \
        _int(config.get("filters"), "filters", 1)


def _transpose_weights(config: dict, shapes: list[Shape]) -> list[Shape]:
    filters = _int(config.get("filters"), "filters", 1)
    return [(*_pair(config, "kernel_size"), filters, _input_channels(shapes)), *_bias(config, filters)]


def _dense(config: dict, shapes: list[Shape]) -> Shape:
    shape = _one(shapes, rank=None)
    return (*shape[:-1], _int(config.get("units"), "units", 1))


def _dense_weights(config: dict, shapes: list[Shape]) -> list[Shape]:
    units = _int(config.get("units"), "units", 1)
    return [(_known(_one(shapes, rank=None)[-1], "a Dense layer's input"), units), *_bias(config, units)]


def _same(config: dict, shapes: list[Shape]) -> Shape:
    return _one(shapes, rank=None)


def _axes(config: dict, shape: Shape, default=-1) -> list[int]:
    axis = values(config.get("axis", default))
    axes = axis if isinstance(axis, list) else [axis]
    rank = len(shape)
    if not axes or not all(isinstance(a, int) and -rank <= a < rank for a in axes):
        raise ShapeError(f"axis must be within the input's {rank} dimensions, got {str(axis)[:40]}")
    return sorted({a % rank for a in axes})


def _batch_norm_weights(config: dict, shapes: list[Shape]) -> list[Shape]:
    shape = _one(shapes, rank=None)
    axes = _axes(config, shape)
    if len(axes) != 1:
        raise ShapeError("BatchNormalization normalizes along one axis here")
    size = (_known(shape[axes[0]], "the normalized axis"),)
    count = 2 + config.get("scale", True) + config.get("center", True) + 3 * bool(config.get("renorm", False))
    return [size] * count


def _kept_axes_shape(config: dict, shape: Shape) -> Shape:
    return tuple(_known(shape[axis], "a normalized axis") for axis in _axes(config, shape))


def _layer_norm_weights(config: dict, shapes: list[Shape]) -> list[Shape]:
    kept = _kept_axes_shape(config, _one(shapes, rank=None))
    scale, center = config.get("scale", True), config.get("center", True) and not config.get("rms_scaling", False)
    return [kept] * (scale + center)


def _group_norm_weights(config: dict, shapes: list[Shape]) -> list[Shape]:
    channels = _kept_axes_shape(config, _one(shapes, rank=None))
    groups = _int(config.get("groups", 32), "groups", -1)
    if groups not in (-1, 0) and channels[0] % groups:
        raise ShapeError(f"groups {groups} must divide the {channels[0]} channels")
    return [channels] * (config.get("scale", True) + config.get("center", True))


def _normalization_weights(config: dict, shapes: list[Shape]) -> list[Shape]:
    """Keras' Normalization: variables only where mean and variance are to be adapted, not given."""
    if config.get("mean") is not None:
        return []
    return [_kept_axes_shape(config, _one(shapes, rank=None))] * 2 + [()]


def _prelu_weights(config: dict, shapes: list[Shape]) -> list[Shape]:
    shape = list(_one(shapes, rank=None)[1:])
    shared = values(config.get("shared_axes")) or []
    shared = shared if isinstance(shared, list) else [shared]
    for axis in shared:
        if not isinstance(axis, int) or not 1 <= axis <= len(shape):
            raise ShapeError(f"shared_axes must name the input's axes 1..{len(shape)}, got {str(shared)[:40]}")
        shape[axis - 1] = 1
    return [tuple(_known(size, "PReLU's input") for size in shape)]


def _broadcast(config: dict, shapes: list[Shape]) -> Shape:
    """Add, Multiply, ...: two or more inputs of one rank, broadcast against each other."""
    if len(shapes) < 2 or len({len(shape) for shape in shapes}) != 1:
        raise ShapeError(f"merges two or more inputs of one rank, got {', '.join(map(shown, shapes))}")
    merged = []
    for sizes in zip(*shapes):
        known = {size for size in sizes if size not in (None, 1)}
        if len(known) > 1:
            raise ShapeError(f"inputs {', '.join(map(shown, shapes))} do not broadcast")
        merged.append(known.pop() if known else None if None in sizes else 1)
    return tuple(merged)


def _concatenate(config: dict, shapes: list[Shape]) -> Shape:
    if len(shapes) < 2 or len({len(shape) for shape in shapes}) != 1:
        raise ShapeError(f"concatenates two or more inputs of one rank, got {', '.join(map(shown, shapes))}")
    [axis] = _axes(config, shapes[0])
    out = list(shapes[0])
    for position in range(len(out)):
        sizes = [shape[position] for shape in shapes]
        if position == axis:
            out[position] = None if None in sizes else sum(sizes)
        elif len({size for size in sizes if size is not None}) > 1:
            raise ShapeError(f"inputs {', '.join(map(shown, shapes))} differ off the axis {axis}")
    return tuple(out)


def _pooling(config: dict, shapes: list[Shape]) -> Shape:
    _channels_last(config)
    batch, height, width, channels = _one(shapes)
    pool = _pair(config, "pool_size", 2)
    stride = _pair(config, "strides", list(pool)) if values(config.get("strides")) is not None else pool
    padding = config.get("padding", "valid")
    return batch, _window(height, pool[0], stride[0], padding), _window(width, pool[1], stride[1], padding), channels


def _global_pooling(config: dict, shapes: list[Shape]) -> Shape:
    _channels_last(config)
    batch, _, _, channels = _one(shapes)
    return (batch, 1, 1, channels) if config.get("keepdims", False) else (batch, channels)


def _flatten(config: dict, shapes: list[Shape]) -> Shape:
    _channels_last(config)
    shape = _one(shapes, rank=None)
    rest = shape[1:]
    return shape[0], None if None in rest else math.prod(rest)


def _reshape(config: dict, shapes: list[Shape]) -> Shape:
    shape = _one(shapes, rank=None)
    target = values(config.get("target_shape"))
    if not isinstance(target, list) or not target or sum(size == -1 for size in target) > 1 or \
            not all(isinstance(size, int) and (size == -1 or size >= 1) for size in target):
        raise ShapeError(f"target_shape must be positive integers and at most one -1, got {str(target)[:40]}")
    if None in shape[1:]:
        if -1 in target:
            return (shape[0], *(None if size == -1 else size for size in target))
        return (shape[0], *target)
    total, known = math.prod(shape[1:]), math.prod(size for size in target if size != -1)
    if (total % known if -1 in target else total != known):
        raise ShapeError(f"cannot reshape {shown(shape)} to {target}")
    return (shape[0], *(total // known if size == -1 else size for size in target))


def _permute(config: dict, shapes: list[Shape]) -> Shape:
    shape = _one(shapes, rank=None)
    dims = values(config.get("dims"))
    if not isinstance(dims, list) or sorted(dims) != list(range(1, len(shape))):
        raise ShapeError(f"dims must order the axes 1..{len(shape) - 1}, got {str(dims)[:40]}")
    return (shape[0], *(shape[axis] for axis in dims))


def _edges(config: dict, field: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """ZeroPadding2D's padding, Cropping2D's cropping: one integer, (rows, cols), or ((top, bottom), (left, right))."""
    value = values(config.get(field, 1))
    if isinstance(value, int):
        value = [value, value]
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        value = [[value[0], value[0]], [value[1], value[1]]]
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) and len(v) == 2 for v in value)):
        raise ShapeError(f"{field} must be an integer, two, or two pairs, got {str(value)[:40]}")
    return tuple((_int(a, field), _int(b, field)) for a, b in value)


def _zero_padding(config: dict, shapes: list[Shape]) -> Shape:
    _channels_last(config)
    batch, height, width, channels = _one(shapes)
    (top, bottom), (left, right) = _edges(config, "padding")
    return (batch, None if height is None else height + top + bottom, None if width is None else width + left + right,
            channels)


def _cropping(config: dict, shapes: list[Shape]) -> Shape:
    _channels_last(config)
    batch, height, width, channels = _one(shapes)
    (top, bottom), (left, right) = _edges(config, "cropping")

    def cropped(size, total):
        if size is not None and size <= total:
            raise ShapeError(f"cropping {total} leaves nothing of {size}")
        return None if size is None else size - total

    return batch, cropped(height, top + bottom), cropped(width, left + right), channels


def _upsampling(config: dict, shapes: list[Shape]) -> Shape:
    _channels_last(config)
    batch, height, width, channels = _one(shapes)
    rows, cols = _pair(config, "size", 2)
    return batch, None if height is None else height * rows, None if width is None else width * cols, channels


def _resized(config: dict, shapes: list[Shape]) -> Shape:
    """Resizing and CenterCrop: the picture becomes (height, width)."""
    _channels_last(config)
    batch, _, _, channels = _one(shapes)
    return batch, _int(config.get("height"), "height", 1), _int(config.get("width"), "width", 1), channels


def _image_same(config: dict, shapes: list[Shape]) -> Shape:
    _channels_last(config)
    return _one(shapes)


SAME = LayerSpec(_same)
CONV = {
    "Conv2D": LayerSpec(_conv2d, _conv2d_weights),
    "DepthwiseConv2D": LayerSpec(_depthwise, _depthwise_weights),
    "SeparableConv2D": LayerSpec(_conv2d, _separable_weights),
    "Conv2DTranspose": LayerSpec(_transpose, _transpose_weights),
}
LAYERS: dict[str, LayerSpec] = {
    **CONV,
    "Dense": LayerSpec(_dense, _dense_weights),
    "BatchNormalization": LayerSpec(_same, _batch_norm_weights),
    "LayerNormalization": LayerSpec(_same, _layer_norm_weights),
    "GroupNormalization": LayerSpec(_same, _group_norm_weights),
    "UnitNormalization": SAME,
    "Normalization": LayerSpec(_same, _normalization_weights),
    "Rescaling": SAME,
    "Resizing": LayerSpec(_resized),
    "CenterCrop": LayerSpec(_resized),
    "PReLU": LayerSpec(_same, _prelu_weights),
    **dict.fromkeys(("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Identity", "Dropout", "GaussianNoise",
                     "GaussianDropout", "AlphaDropout", "ActivityRegularization"), SAME),
    **dict.fromkeys(("SpatialDropout2D", "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
                     "RandomContrast", "RandomBrightness"), LayerSpec(_image_same)),
    **dict.fromkeys(("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"), LayerSpec(_broadcast)),
    "Concatenate": LayerSpec(_concatenate),
    "MaxPooling2D": LayerSpec(_pooling),
    "AveragePooling2D": LayerSpec(_pooling),
    "GlobalAveragePooling2D": LayerSpec(_global_pooling),
    "GlobalMaxPooling2D": LayerSpec(_global_pooling),
    "Flatten": LayerSpec(_flatten),
    "Reshape": LayerSpec(_reshape),
    "Permute": LayerSpec(_permute),
    "ZeroPadding2D": LayerSpec(_zero_padding),
    "Cropping2D": LayerSpec(_cropping),
    "UpSampling2D": LayerSpec(_upsampling),
}
# Keras 2's names for some of them (Keras 3 reads both).
ALIASES = {"MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D", "Convolution2D": "Conv2D",
           "SeparableConvolution2D": "SeparableConv2D",
           "GlobalAvgPool2D": "GlobalAveragePooling2D", "GlobalMaxPool2D": "GlobalMaxPooling2D"}


def spec(class_name: str) -> LayerSpec | None:
    return LAYERS.get(ALIASES.get(class_name, class_name))
