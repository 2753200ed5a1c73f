"""An ONNX graph as a Keras model: one layer per node, each computing its op in TensorFlow. Workers only.

PyTorch models reach the service as ONNX files (`torch.onnx.export`). The
maintained converters write Keras 2 files of TF-op layers, need other Python
and TensorFlow versions, or build channels-first models (docs/onnx.md), so the
graph is interpreted here, op by op (OPS), after featurevis/onnxcheck.py has
read it as data and found every op in that table.

Layout: ONNX images are NCHW; TensorFlow's CPU kernels compute convolutions'
input gradients in NHWC only, and the rest of the service reads channels
last. Every rank-4 value a layer outputs is therefore kept NHWC, and each op
either maps its axes (convolutions, pooling, concatenation, elementwise ops)
or moves its operands back to ONNX order first (reshapes, transposes). The
model's input is the preprocessed picture, NHWC, like a Keras model's.

A Functional model of these layers gives the rest of the service what a Keras
file gives it: any node's output as a target (targets.py), a network
truncated at a target computes nothing past it, and steps trace once. Values
that depend on constants only (shape arithmetic) are computed while building,
so the model holds only what runs on the picture. Each layer keeps the
node's op type and the target name the legacy exporter's module path gives
it (`layer3/layer3.0/conv1` for `/layer3/layer3.0/conv1/Conv`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import onnx
import tensorflow as tf
from onnx import numpy_helper

from featurevis.modelcheck import MAX_OUTPUT_VALUES
from featurevis.onnxcheck import image_input

TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}  # an NCHW axis's place in NHWC
BATCH_IN_SHAPE = 0  # Shape's batch entry: Reshape reads 0 as "copy this dimension", which is what a batch needs
WEIGHT_VALUES = 64  # constants larger than this become the layer's (non-trainable) weights, shared by every step
VERIFY_SAMPLES = 3
# A node's output may differ from onnxruntime's by ATOL + RTOL * (the largest magnitude of onnxruntime's output):
# float32 sums taken in another order differ, a wrong axis or mode differs by far more (tests/test_onnx.py).
VERIFY_ATOL, VERIFY_RTOL = 1e-4, 1e-3


class NodeFailed(ValueError):
    """A node that cannot be built, or computes other values than onnxruntime; str() is one line naming it."""


@dataclass
class Value:
    """A node's output while building: a constant (numpy, ONNX order) or a Keras tensor (rank 4: NHWC)."""

    constant: np.ndarray | None = None
    tensor: keras.KerasTensor | None = None

    @property
    def rank(self) -> int:
        return self.constant.ndim if self.constant is not None else len(self.tensor.shape)


class Arg:
    """One input of an op while it runs: a constant, a weight, or a tensor in the stored layout."""

    def __init__(self, value, nhwc: bool, constant: np.ndarray | None = None):
        self.value, self.nhwc, self.constant = value, nhwc, constant

    @property
    def rank(self) -> int:
        return len(self.value.shape)

    def onnx(self):
        """The value in ONNX's own axis order."""
        return tf.transpose(self.value, TO_NCHW) if self.nhwc else self.value

    def like(self, other: Arg):
        """The value laid out to broadcast against `other` (NHWC when `other` is): ONNX's right-aligned
        broadcasting, then NCHW -> NHWC."""
        if not other.nhwc or self.nhwc:
            return self.value
        value = self.value
        if self.rank < 4:
            value = tf.reshape(value, [1] * (4 - self.rank) + list(value.shape)) if self.constant is None else \
                self.constant.reshape((1,) * (4 - self.rank) + self.constant.shape)
        return tf.transpose(value, TO_NHWC) if self.constant is None else np.transpose(value, TO_NHWC)

    def ints(self) -> list[int]:
        return [int(item) for item in np.asarray(self.constant).reshape(-1)]


def stored(tensor) -> tf.Tensor:
    """An op's result in ONNX order, stored the way this module keeps it (rank 4: NHWC)."""
    return tf.transpose(tensor, TO_NHWC) if len(tensor.shape) == 4 else tensor


def axis_of(arg: Arg, axis: int) -> int:
    axis = axis % arg.rank
    return NHWC_AXIS[axis] if arg.nhwc else axis


# --- the ops ---------------------------------------------------------------------------------------------------
# Each takes the node's inputs (Arg, None for an omitted optional one) and attributes, and returns its outputs
# stored (rank 4: NHWC).


def _conv(args, attrs):
    x, weight, bias = args[0], args[1].constant, args[2] if len(args) > 2 else None
    if not x.nhwc:
        raise ValueError("Conv: only 2-D convolutions of (N, C, H, W) inputs")
    groups = attrs.get("group", 1)
    strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    value = _pad_spatial(x.value, attrs, weight.shape[2:], strides, dilations, 0.0)
    kernel = args[1].value  # [kh, kw, in / groups, out]: laid out by _weight_layout
    channels_in = x.value.shape[-1]
    if groups == 1:
        y = tf.nn.conv2d(value, kernel, [1, *strides, 1], "VALID", dilations=[1, *dilations, 1])
    elif groups == channels_in and weight.shape[1] == 1:
        multiplier = weight.shape[0] // groups
        depthwise = tf.reshape(kernel, [*weight.shape[2:], groups, multiplier])
        y = tf.nn.depthwise_conv2d(value, depthwise, [1, *strides, 1], "VALID", dilations=dilations)
    else:
        parts = zip(tf.split(value, groups, axis=-1), tf.split(kernel, groups, axis=-1))
        y = tf.concat([tf.nn.conv2d(part, k, [1, *strides, 1], "VALID", dilations=[1, *dilations, 1])
                       for part, k in parts], axis=-1)
    return [y + bias.value if bias is not None else y]


def _pad_spatial(value, attrs, kernel, strides, dilations, fill: float, ceil: bool = False):
    """ONNX's explicit pads (or auto_pad), and ceil_mode's extra row and column, as a tf.pad of NHWC."""
    sizes = value.shape[1], value.shape[2]
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(sizes, kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2) if auto == "SAME_UPPER" else (total - total // 2, total // 2))
        (top, bottom), (left, right) = pads
    else:
        top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0]) if auto == "NOTSET" else (0, 0, 0, 0)
    if ceil:
        bottom += _ceil_extra(sizes[0], top, bottom, kernel[0], strides[0], dilations[0])
        right += _ceil_extra(sizes[1], left, right, kernel[1], strides[1], dilations[1])
    if not any((top, left, bottom, right)):
        return value
    return tf.pad(value, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=fill)


def _ceil_extra(size: int, before: int, after: int, kernel: int, stride: int, dilation: int) -> int:
    """The padding ceil_mode adds so that the last window is counted, unless it would start in the padding
    after the input (PyTorch's rule, which its exporter keeps)."""
    span, padded = (kernel - 1) * dilation + 1, size + before + after
    windows = -(-(padded - span) // stride) + 1
    if (windows - 1) * stride >= size + before:
        windows -= 1
    return max(0, (windows - 1) * stride + span - padded)


def _max_pool(args, attrs):
    kernel, strides = attrs["kernel_shape"], attrs.get("strides", [1, 1])
    dilations = attrs.get("dilations", [1, 1])
    value = _pad_spatial(args[0].value, attrs, kernel, strides, dilations, -np.inf, bool(attrs.get("ceil_mode", 0)))
    return [tf.nn.pool(value, kernel, "MAX", strides=strides, padding="VALID", dilations=dilations)]


def _average_pool(args, attrs):
    """Zeros pad, and each window's mean is rescaled to the cells it counts: all of the explicit padding's
    with count_include_pad, none of it without; never ceil_mode's."""
    x, kernel, strides = args[0].value, attrs["kernel_shape"], attrs.get("strides", [1, 1])
    ceil = bool(attrs.get("ceil_mode", 0))
    total = tf.nn.avg_pool2d(_pad_spatial(x, attrs, kernel, strides, [1, 1], 0.0, ceil), kernel, strides, "VALID")
    if _pad_spatial(x[:1, :, :, :1], attrs, kernel, strides, [1, 1], 0.0, ceil).shape == x[:1, :, :, :1].shape:
        return [total]
    cells = tf.ones_like(x[:1, :, :, :1])
    if attrs.get("count_include_pad", 0):
        cells = _pad_spatial(cells, attrs, kernel, strides, [1, 1], 1.0)
        cells = _pad_spatial(cells, {}, kernel, strides, [1, 1], 0.0, ceil)
    else:
        cells = _pad_spatial(cells, attrs, kernel, strides, [1, 1], 0.0, ceil)
    return [total / tf.nn.avg_pool2d(cells, kernel, strides, "VALID")]


def _global_pool(reduce):
    return lambda args, attrs: [reduce(args[0].value, axis=[1, 2], keepdims=True)]


def _batch_norm(args, attrs):
    x, scale, bias = args[:3]
    return [x.value * scale.value + bias.value]  # scale, shift: prepared by _batch_norm_weights


def _elementwise(function):
    def run(args, attrs):
        present = [arg for arg in args if arg is not None]
        layout = next((arg for arg in present if arg.nhwc), present[0])
        result = present[0].like(layout)
        for arg in present[1:]:
            result = function(result, arg.like(layout))
        return [result]
    return run


def _unary(function):
    return lambda args, attrs: [function(args[0].value, attrs)]


def _clip(args, attrs):
    low = args[1].constant if len(args) > 1 and args[1] is not None else attrs.get("min", -np.inf)
    high = args[2].constant if len(args) > 2 and args[2] is not None else attrs.get("max", np.inf)
    return [tf.clip_by_value(args[0].value, float(low), float(high))]


def _hard_sigmoid(x, attrs):
    return tf.clip_by_value(x * attrs.get("alpha", 0.2) + attrs.get("beta", 0.5), 0.0, 1.0)


def _concat(args, attrs):
    layout = next((arg for arg in args if arg.nhwc), args[0])
    return [tf.concat([arg.like(layout) for arg in args], axis=axis_of(layout, attrs["axis"]))]


def _split(args, attrs):
    x, outputs = args[0], attrs["num_outputs"]
    sizes = args[1].ints() if len(args) > 1 and args[1] is not None else attrs.get("split")
    if sizes is None:
        size = x.value.shape[axis_of(x, attrs.get("axis", 0))]
        sizes = [-(-size // outputs)] * (outputs - 1)
        sizes.append(size - sum(sizes))
    return tf.split(x.value, sizes, axis=axis_of(x, attrs.get("axis", 0)))


def _resize(args, attrs):
    """Height and width resized one after the other, each output row or column read from the source
    coordinate ONNX's formula gives (with the scale given, which need not be output / input size)."""
    x = args[0]
    if not x.nhwc:
        raise ValueError("Resize: only (N, C, H, W) inputs")
    scales = args[2].constant if len(args) > 2 and args[2] is not None and args[2].constant.size else None
    sizes = args[3].ints() if len(args) > 3 and args[3] is not None else None
    value = x.value
    for axis, onnx_axis in ((1, 2), (2, 3)):
        size_in = value.shape[axis]
        size_out = sizes[onnx_axis] if sizes else int(np.floor(size_in * scales[onnx_axis]))
        scale = size_out / size_in if sizes else float(scales[onnx_axis])
        coordinates = _source_coordinates(size_in, size_out, scale, attrs.get("coordinate_transformation_mode",
                                                                                "half_pixel"))
        value = _resample(value, axis, coordinates, size_in, attrs.get("mode", "nearest"),
                          attrs.get("nearest_mode", "round_prefer_floor"))
    return [value]


def _source_coordinates(size_in: int, size_out: int, scale: float, transform: str) -> np.ndarray:
    out = np.arange(size_out, dtype=np.float64)
    if transform == "align_corners":
        return out * (size_in - 1) / (size_out - 1) if size_out > 1 else np.zeros_like(out)
    if transform == "asymmetric":
        return out / scale
    if transform == "pytorch_half_pixel" and size_out == 1:
        return np.zeros_like(out)
    if transform in ("half_pixel", "pytorch_half_pixel"):
        return (out + 0.5) / scale - 0.5
    raise ValueError(f"coordinate_transformation_mode {transform!r} is not supported")


NEAREST = {"floor": np.floor, "ceil": np.ceil, "round_prefer_floor": lambda c: np.ceil(c - 0.5),
           "round_prefer_ceil": lambda c: np.floor(c + 0.5)}


def _resample(value, axis: int, coordinates: np.ndarray, size_in: int, mode: str, nearest_mode: str):
    if mode == "nearest":
        index = np.clip(NEAREST[nearest_mode](coordinates), 0, size_in - 1).astype(np.int32)
        return tf.gather(value, index, axis=axis)
    coordinates = np.clip(coordinates, 0, size_in - 1)
    low = np.floor(coordinates).astype(np.int32)
    high = np.minimum(low + 1, size_in - 1)
    weight = (coordinates - low).astype(np.float32).reshape([1, -1, 1, 1] if axis == 1 else [1, 1, -1, 1])
    return tf.gather(value, low, axis=axis) * (1 - weight) + tf.gather(value, high, axis=axis) * weight


def _softmax(args, attrs):
    x = args[0]
    return [tf.nn.softmax(x.value, axis=axis_of(x, attrs.get("axis", -1)))]


def _reduce(function):
    def run(args, attrs):
        x = args[0]
        axes = args[1].ints() if len(args) > 1 and args[1] is not None else attrs.get("axes")
        axes = list(range(x.rank)) if axes is None else axes
        if attrs.get("keepdims", 1):
            return [function(x.value, axis=[axis_of(x, axis) for axis in axes], keepdims=True)]
        return [stored(function(x.onnx(), axis=[axis % x.rank for axis in axes], keepdims=False))]
    return run


def _flatten(args, attrs):
    x = args[0].onnx()
    axis = attrs.get("axis", 1)
    axis += len(x.shape) if axis < 0 else 0
    return [tf.reshape(x, [1, -1] if axis == 0 else [-1, int(np.prod(x.shape[axis:]))])]


def _reshape(args, attrs):
    x = args[0].onnx()
    shape = args[1].ints()
    if not attrs.get("allowzero", 0):
        shape = [x.shape[index] if size == 0 else size for index, size in enumerate(shape)]  # None: the batch
    if shape and (shape[0] is None or (shape[0] == 1 and x.shape[0] is None)):
        # The batch, kept (`x.view(x.size(0), -1)`), or a graph exported for one picture (torch.onnx.export's
        # default): each picture of a batch is reshaped alike.
        rest = shape[1:]
        if -1 in rest:
            rest[rest.index(-1)] = int(np.prod(x.shape[1:])) // int(np.prod([size for size in rest if size != -1]))
        shape = [-1, *rest]
    return [stored(tf.reshape(x, shape))]


def _transpose(args, attrs):
    x = args[0].onnx()
    return [stored(tf.transpose(x, attrs.get("perm", list(reversed(range(len(x.shape)))))))]


def _squeeze(args, attrs):
    x = args[0].onnx()
    axes = args[1].ints() if len(args) > 1 and args[1] is not None else attrs.get("axes")
    return [stored(tf.squeeze(x, axis=axes))]


def _unsqueeze(args, attrs):
    x = args[0].onnx()
    axes = args[1].ints() if len(args) > 1 and args[1] is not None else attrs["axes"]
    rank = len(x.shape) + len(axes)
    for axis in sorted(axis % rank for axis in axes):
        x = tf.expand_dims(x, axis)
    return [stored(x)]


def _gemm(args, attrs):
    a, b = args[0].onnx(), args[1].value
    if attrs.get("transA", 0):
        a = tf.transpose(a)
    y = tf.matmul(a, b, transpose_b=bool(attrs.get("transB", 0))) * attrs.get("alpha", 1.0)
    if len(args) > 2 and args[2] is not None:
        y = y + attrs.get("beta", 1.0) * args[2].value
    return [y]


def _matmul(args, attrs):
    return [stored(tf.matmul(args[0].onnx(), args[1].onnx()))]


def _pad(args, attrs):
    x = args[0]
    pads = args[1].ints() if len(args) > 1 else attrs["pads"]
    fill = float(args[2].constant) if len(args) > 2 and args[2] is not None else attrs.get("value", 0.0)
    rank = x.rank
    axes = args[3].ints() if len(args) > 3 and args[3] is not None else list(range(rank))
    paddings = [[0, 0] for _ in range(rank)]
    for index, axis in enumerate(axes):
        paddings[axis_of(x, axis)] = [pads[index], pads[index + len(axes)]]
    mode = attrs.get("mode", "constant")
    if mode == "constant":
        return [tf.pad(x.value, paddings, constant_values=fill)]
    if mode == "reflect":
        return [tf.pad(x.value, paddings, mode="REFLECT")]
    value = x.value  # edge: the first and last row (or column) repeated
    for axis, (before, after) in enumerate(paddings):
        if before or after:
            size = value.shape[axis]
            value = tf.gather(value, np.clip(np.arange(-before, size + after), 0, size - 1), axis=axis)
    return [value]


def _slice(args, attrs):
    x = args[0]
    starts, ends = args[1].ints(), args[2].ints()
    axes = args[3].ints() if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = args[4].ints() if len(args) > 4 and args[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.rank
    for start, end, axis, step in zip(starts, ends, axes, steps):
        size = x.value.shape[axis_of(x, axis)]
        index[axis_of(x, axis)] = slice(max(min(start, size), -size - 1) if step < 0 else start,
                                        None if end >= size and step > 0 else
                                        None if end < -size and step < 0 else end, step)
    return [x.value[tuple(index)]]


def _gather(args, attrs):
    x, indices = args[0], args[1].constant
    if x.nhwc and indices.ndim == 0:
        return [stored(tf.gather(x.onnx(), indices, axis=attrs.get("axis", 0)))]
    return [tf.gather(x.value, indices, axis=axis_of(x, attrs.get("axis", 0)))]


def _expand(args, attrs):
    x = args[0].onnx()
    shape = args[1].ints()
    return [stored(x * tf.ones(shape, x.dtype))]


def _cast(args, attrs):
    return [tf.cast(args[0].value, onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))]


def _where(args, attrs):
    condition, x, y = args
    layout = next((arg for arg in args if arg.nhwc), x)
    return [tf.where(condition.like(layout), x.like(layout), y.like(layout))]


def _lrn(args, attrs):
    size = attrs["size"]
    return [tf.nn.local_response_normalization(args[0].value, depth_radius=(size - 1) // 2, bias=attrs.get("bias", 1.0),
                                               alpha=attrs.get("alpha", 1e-4) / size, beta=attrs.get("beta", 0.75))]


def _gelu(x, attrs):
    return tf.nn.gelu(x, approximate=attrs.get("approximate", "none") == "tanh")


IMPLEMENTATIONS: dict[str, Callable] = {
    "Conv": _conv, "BatchNormalization": _batch_norm,
    "MaxPool": _max_pool, "AveragePool": _average_pool,
    "GlobalAveragePool": _global_pool(tf.reduce_mean), "GlobalMaxPool": _global_pool(tf.reduce_max),
    "Relu": _unary(lambda x, a: tf.nn.relu(x)), "LeakyRelu": _unary(lambda x, a: tf.nn.leaky_relu(x, a.get("alpha", 0.01))),
    "Sigmoid": _unary(lambda x, a: tf.sigmoid(x)), "Tanh": _unary(lambda x, a: tf.tanh(x)),
    "HardSigmoid": _unary(_hard_sigmoid), "HardSwish": _unary(lambda x, a: x * tf.clip_by_value(x / 6 + 0.5, 0.0, 1.0)),
    "Elu": _unary(lambda x, a: tf.where(x > 0, x, a.get("alpha", 1.0) * (tf.exp(x) - 1))),
    "Softplus": _unary(lambda x, a: tf.nn.softplus(x)), "Gelu": _unary(_gelu),
    "Mish": _unary(lambda x, a: x * tf.tanh(tf.nn.softplus(x))),
    "Exp": _unary(lambda x, a: tf.exp(x)), "Sqrt": _unary(lambda x, a: tf.sqrt(x)), "Neg": _unary(lambda x, a: -x),
    "Abs": _unary(lambda x, a: tf.abs(x)), "Erf": _unary(lambda x, a: tf.math.erf(x)),
    "Reciprocal": _unary(lambda x, a: 1 / x), "Floor": _unary(lambda x, a: tf.floor(x)),
    "Ceil": _unary(lambda x, a: tf.math.ceil(x)),
    "Identity": _unary(lambda x, a: x), "Dropout": _unary(lambda x, a: x), "Clip": _clip, "Cast": _cast,
    "Add": _elementwise(tf.add), "Sub": _elementwise(tf.subtract), "Mul": _elementwise(tf.multiply),
    "Div": _elementwise(tf.divide), "Pow": _elementwise(tf.pow), "Max": _elementwise(tf.maximum),
    "Min": _elementwise(tf.minimum), "Sum": _elementwise(tf.add), "Equal": _elementwise(tf.equal),
    "PRelu": _elementwise(lambda x, slope: tf.where(x >= 0, x, x * slope)), "Where": _where,
    "Concat": _concat, "Split": _split, "Resize": _resize, "Softmax": _softmax, "LRN": _lrn,
    "ReduceMean": _reduce(tf.reduce_mean), "ReduceMax": _reduce(tf.reduce_max), "ReduceSum": _reduce(tf.reduce_sum),
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Gemm": _gemm, "MatMul": _matmul, "Pad": _pad, "Slice": _slice, "Gather": _gather, "Expand": _expand,
}
# Ops that make values from constants only (shapes, ranges, fills): computed while building (_fold), never layers.
FOLDED = {"Shape", "Constant", "ConstantOfShape", "Range"}


def _conv_weights(constants: dict, x: Value, attrs: dict) -> dict:
    """ONNX's (out, in / groups, kh, kw) kernel as TensorFlow's (kh, kw, in / groups, out)."""
    return {**constants, 1: np.ascontiguousarray(constants[1].transpose(2, 3, 1, 0))}


def _batch_norm_weights(constants: dict, x: Value, attrs: dict) -> dict:
    """Inference batch normalization folded to one scale and shift per channel, shaped for the stored layout."""
    factor = constants[1] / np.sqrt(constants[4] + attrs.get("epsilon", 1e-5))
    shift = constants[2] - constants[3] * factor
    shape = [-1] if x.rank in (2, 4) else [-1] + [1] * (x.rank - 2)
    return {1: factor.reshape(shape).astype(np.float32), 2: shift.reshape(shape).astype(np.float32)}


PREPARE = {"Conv": _conv_weights, "BatchNormalization": _batch_norm_weights}
PASSING = {"Identity", "Dropout"}  # at inference their output is their input: no layer, so heads read through them


class OnnxNode(keras.layers.Layer):
    """One output of one ONNX node, computed by the op's implementation (IMPLEMENTATIONS).

    `op_type`, `node` (the ONNX node's name) and `target_name` (what a job calls it) are what the registry's
    description reads (zoo.describe); large constant inputs are the layer's non-trainable weights.
    """

    def __init__(self, node: onnx.NodeProto, attrs: dict, slots: list, constants: dict[int, np.ndarray],
                 output_index: int, name: str):
        super().__init__(name=name, trainable=False)
        self.op_type, self.node, self.target_name = node.op_type, node.name, name
        self.tensor_name = node.output[output_index]  # the ONNX value this layer computes
        # what the target is named after: the node, or for a node with several outputs, this output's tensor
        self.source = node.name if len(node.output) == 1 else self.tensor_name
        self._run, self._attrs, self._slots, self._output_index = IMPLEMENTATIONS[node.op_type], attrs, slots, output_index
        self._constants = {}
        for slot, array in constants.items():
            weight = None
            if array.size > WEIGHT_VALUES and array.dtype.kind == "f":
                weight = self.add_weight(shape=array.shape, initializer="zeros", trainable=False, name=f"input{slot}")
                weight.assign(array.astype(np.float32))
            self._constants[slot] = (array, weight)

    def call(self, inputs):
        tensors = iter(inputs)
        args = []
        for slot, kind in enumerate(self._slots):
            if kind is None:
                args.append(None)
            elif kind == "constant":
                array, weight = self._constants[slot]
                args.append(Arg(array if weight is None else weight, False, array))
            else:
                args.append(Arg(next(tensors), kind == "nhwc"))
        return self._run(args, self._attrs)[self._output_index]


def build(model: onnx.ModelProto, input_size: tuple[int, int] | None = None) -> keras.Model:
    """The Keras model of a checked ONNX graph (featurevis/onnxcheck.py), from the preprocessed NHWC picture to
    the graph's outputs; `input_size` fixes the height and width a graph leaves open."""
    graph = model.graph
    image = image_input(model)
    height, width = input_size or (image.height, image.width)
    pixels = keras.Input((height, width, image.channels), name=_layer_name(image.name, set()))
    values = {tensor.name: Value(constant=numpy_helper.to_array(tensor)) for tensor in graph.initializer}
    values[image.name] = Value(tensor=pixels)
    used: set[str] = {pixels.name}
    created: list[OnnxNode] = []
    for index, node in enumerate(graph.node):
        try:
            values.update(_built(node, index, [values[name] if name else None for name in node.input], used, created))
        except NodeFailed:
            raise
        except Exception as error:  # noqa: BLE001 - whatever TensorFlow or numpy says, it is this node's
            while error.__cause__ is not None or error.__context__ is not None:  # Keras wraps what call() raised
                error = error.__cause__ or error.__context__
            raise NodeFailed(f"node {node.name or node.op_type!r} ({node.op_type}) cannot be built: "
                             f"{' '.join(str(error).split())[:160]}") from None
    _name_targets(created)
    outputs = [values[output.name].tensor for output in graph.output]
    return keras.Model(pixels, outputs[0] if len(outputs) == 1 else outputs, name="onnx")


def _built(node: onnx.NodeProto, index: int, inputs: list[Value | None], used: set[str],
           created: list[OnnxNode]) -> dict[str, Value]:
    """A node's outputs: constants where it reads constants only, else each output a layer's."""
    attrs = _attributes(node)
    if node.op_type == "Split":
        attrs.setdefault("num_outputs", len(node.output))
    if all(value is None or value.constant is not None for value in inputs) or node.op_type == "Shape":
        return {name: Value(constant=array) for name, array in zip(node.output, _fold(node, inputs, attrs))}
    if node.op_type in FOLDED:
        raise NodeFailed(f"node {node.name or node.op_type!r} ({node.op_type}) computes from the picture; "
                         f"featurevis runs {node.op_type} on constants only")
    if node.op_type in PASSING:
        return {node.output[0]: inputs[0]}
    built = {}
    for position, output in enumerate(node.output):
        if not output:
            continue
        layer = _layer(node, attrs, inputs, position, used)
        layer.graph_index = index  # targets.all_layers lists layers in the graph's order
        tensors = [value.tensor for value in inputs if value is not None and value.tensor is not None]
        if isinstance(layer, OnnxNode):
            created.append(layer)
            tensor = layer(tensors)
        else:
            tensor = layer(tensors[0])
        values = int(np.prod([size for size in tensor.shape[1:]], dtype=object))
        if values > MAX_OUTPUT_VALUES:
            raise NodeFailed(f"node {node.name or node.op_type!r} ({node.op_type}) outputs {values} values a "
                             f"picture, over {MAX_OUTPUT_VALUES}")
        built[output] = Value(tensor=tensor)
    return built


def _layer(node: onnx.NodeProto, attrs: dict, inputs: list[Value | None], index: int,
           used: set[str]) -> keras.layers.Layer:
    source = node.name if len(node.output) == 1 else node.output[index]
    name = _layer_name(source or f"{node.op_type}_{len(used)}", used)
    x = inputs[0]
    if node.op_type == "Softmax" and x.rank == 2 and attrs.get("axis", -1) in (-1, 1):
        return keras.layers.Softmax(name=name)  # a class head's final activation, as targets.class_head reads it
    if node.op_type == "Sigmoid" and x.rank == 2:
        return keras.layers.Activation("sigmoid", name=name)
    slots = [None if value is None else "constant" if value.constant is not None else
             "nhwc" if value.rank == 4 else "tensor" for value in inputs]
    constants = {slot: value.constant for slot, value in enumerate(inputs) if value is not None and
                 value.constant is not None}
    if node.op_type in PREPARE:
        constants = PREPARE[node.op_type](constants, x, attrs)
        slots = [slot if slot != "constant" or position in constants else None for position, slot in enumerate(slots)]
    return OnnxNode(node, attrs, slots, constants, index, name)


def _fold(node: onnx.NodeProto, inputs: list[Value | None], attrs: dict) -> list[np.ndarray]:
    """A node whose inputs are all constants, computed now by onnx's reference implementation (numpy); Shape
    reads the static shape of a tensor, in ONNX order, with the batch as 0 (Reshape's "keep this dimension")."""
    if node.op_type == "Shape" and inputs[0].tensor is not None:
        shape = list(inputs[0].tensor.shape)
        shape = [shape[i] for i in TO_NCHW] if len(shape) == 4 else shape
        shape = np.array([BATCH_IN_SHAPE if size is None else size for size in shape], np.int64)
        return [shape[attrs.get("start", 0):attrs.get("end", len(shape))]]
    from onnx.reference import ReferenceEvaluator

    feeds = {name: value.constant for name, value in zip(node.input, inputs) if name}
    if (size := _folded_size(node, feeds)) > MAX_OUTPUT_VALUES:
        raise NodeFailed(f"node {node.name or node.op_type!r} ({node.op_type}) makes a constant of {size} values, "
                         f"over {MAX_OUTPUT_VALUES}")
    return [np.asarray(array) for array in ReferenceEvaluator(node).run(None, feeds)]


def _folded_size(node: onnx.NodeProto, feeds: dict) -> int:
    """How many values the ops that make arrays from a shape or a range would allocate, before they do."""
    arrays = [np.asarray(value) for value in feeds.values()]
    if node.op_type == "ConstantOfShape":
        return int(np.prod([int(size) for size in arrays[0].reshape(-1)], dtype=object))
    if node.op_type == "Expand":
        shape = np.broadcast_shapes(arrays[0].shape, tuple(int(size) for size in arrays[1].reshape(-1)))
        return int(np.prod(shape, dtype=object))
    if node.op_type == "Range":
        start, limit, delta = (float(array) for array in arrays)
        return int(max(np.ceil((limit - start) / delta), 0)) if delta else MAX_OUTPUT_VALUES + 1
    return max((array.size for array in arrays), default=0)


def _attributes(node: onnx.NodeProto) -> dict:
    attrs = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        attrs[attribute.name] = list(value) if isinstance(value, (list, tuple)) else value
    return attrs


def _layer_name(name: str, used: set[str]) -> str:
    """A Keras layer name (no '/') unique in the model, from an ONNX node or tensor name."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip("/")) or "node"
    candidate, number = base, 1
    while candidate in used:
        candidate, number = f"{base}_{number}", number + 1
    used.add(candidate)
    return candidate


def _name_targets(layers: list[OnnxNode]) -> None:
    """Each layer's target name: the module path the legacy exporter wrote (`/layer3/layer3.0/conv1/Conv` ->
    `layer3/layer3.0/conv1`) for the last node of a module, the node's own path for the others
    (`model.0/act/Sigmoid`), a tensor's name for one output of a node with several; unique."""
    last_of_scope = {}
    for layer in layers:
        scope = _scope(layer.node) if layer.source == layer.node else None
        if scope:
            last_of_scope[scope] = layer
    taken: set[str] = set()
    for layer in layers:
        scope = _scope(layer.node)
        if layer.source != layer.node:
            wanted = layer.source.strip("/") or layer.name
        elif scope and last_of_scope[scope] is layer:
            wanted = scope
        else:
            wanted = layer.node.strip("/") or layer.name
        name, number = wanted, 1
        while name in taken:
            name, number = f"{wanted}_{number}", number + 1
        taken.add(name)
        layer.target_name = name


def _scope(node_name: str) -> str | None:
    """The module path of a node the legacy exporter named (`/layer3/layer3.0/conv1/Conv` -> `layer3/layer3.0/conv1`)."""
    if not node_name.startswith("/") or node_name.count("/") < 2:
        return None
    return node_name[1:].rsplit("/", 1)[0]


def verify(model: onnx.ModelProto, network: keras.Model, samples: int = VERIFY_SAMPLES, seed: int = 0) -> float:
    """Every (N, C, H, W) node and every output of the built network against onnxruntime on random pictures;
    NodeFailed naming the first node (in graph order) that differs by more than the tolerance. The largest
    difference relative to its tolerance."""
    import onnxruntime

    checked = sorted((layer for layer in network.layers if isinstance(layer, OnnxNode) and len(layer.output.shape) == 4),
                     key=lambda layer: layer.graph_index)
    names = [layer.tensor_name for layer in checked] + [output.name for output in model.graph.output]
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    extended.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names[:len(checked)]
                                 if name not in {output.name for output in model.graph.output})
    session = onnxruntime.InferenceSession(extended.SerializeToString(), providers=["CPUExecutionProvider"])
    probe = keras.Model(network.inputs[0], [layer.output for layer in checked] + list(network.outputs))
    image = image_input(model)
    rng = np.random.default_rng(seed)
    where = [layer.node or layer.tensor_name for layer in checked] + [f"graph output {name}" for name in names[len(checked):]]
    worst = 0.0
    for _ in range(samples):
        picture = rng.normal(size=(1, *network.inputs[0].shape[1:])).astype(np.float32)
        expected = session.run(names, {image.name: np.transpose(picture, TO_NCHW)})
        ours = probe(picture)
        for name, theirs, mine in zip(where, expected, ours):
            mine = np.asarray(mine)
            mine = np.transpose(mine, TO_NCHW) if mine.ndim == 4 else mine
            if mine.shape != theirs.shape:
                raise NodeFailed(f"{name}: outputs {mine.shape}, onnxruntime {theirs.shape}")
            tolerance = VERIFY_ATOL + VERIFY_RTOL * float(np.abs(theirs).max(initial=0))
            difference = float(np.abs(mine - theirs).max(initial=0))
            if not difference <= tolerance:
                raise NodeFailed(f"{name}: differs from onnxruntime by {difference:.3g} (tolerance {tolerance:.3g})")
            worst = max(worst, difference / tolerance)
    return worst
