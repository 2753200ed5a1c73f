"""The static check of an ONNX file, before anything is built from it. TensorFlow-free; needs `onnx`.

An ONNX file is a protobuf message: parsing it runs no code. It is refused,
in one line naming the reason, unless every node is an op of the standard
domain that featurevis/onnxgraph.py implements (OPS) at an opset it knows,
every tensor's data is inside the file and as large as its declared shape,
the sizes and the parameter count are within the limits the Keras check uses
(featurevis/modelcheck.py), every node reads only what earlier nodes or the
weights produce (a truncated or reordered graph fails here), and the graph
takes one image, (batch, channels, height, width).

The producer does not import this module (it stays free of onnx): it only
recognizes the file by content (modelcheck.file_format), and the worker
runs this check before the disposable process builds the model and again
before every serving load.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from featurevis.registry import ModelRefused

# What onnxgraph.IMPLEMENTATIONS computes, and what it computes from constants only while building (FOLDED).
OPS = frozenset({
    "Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "Div", "Dropout", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor",
    "Gather", "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "HardSigmoid", "HardSwish", "Identity", "LRN",
    "LeakyRelu", "MatMul", "Max", "MaxPool", "Min", "Mish", "Mul", "Neg", "PRelu", "Pad", "Pow", "Range",
    "Reciprocal", "ReduceMax", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Resize", "Shape", "Sigmoid", "Slice",
    "Softmax", "Softplus", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Transpose", "Unsqueeze", "Where",
})
OPSETS = range(11, 22)  # the standard domain's versions whose ops' inputs and attributes onnxgraph reads
DOMAINS = ("", "ai.onnx")
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDINATES = {"half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"}
NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
PAD_MODES = {"constant", "reflect", "edge"}
MAX_NODES = 20_000
MAX_TENSOR_VALUES = 2**28  # one weight tensor (1 GB in float32)
IMAGE_CHANNELS = (1, 3)


@dataclass(frozen=True)
class ImageInput:
    """The graph's picture input; height and width None where the graph leaves them open."""

    name: str
    channels: int
    height: int | None
    width: int | None


def check_file(path: str | os.PathLike, max_params: int, input_size: tuple[int, int] | None = None
               ) -> tuple[onnx.ModelProto, int]:
    """The parsed model and its parameter count; ModelRefused (one line, `file: ...`) for anything a worker
    must not build. `input_size` fixes the height and width the graph leaves open (the `input_size` option)."""
    model = parse(path)
    _check_opsets(model)
    params = _check_tensors(model, max_params)
    _check_nodes(model)
    image = image_input(model)
    if (image.height is None or image.width is None) and input_size is None:
        raise ModelRefused(f"input_size: the graph leaves the height and width of its input {image.name!r} open; "
                           f"give them (--input-size H,W)")
    return model, params


def parse(path: str | os.PathLike) -> onnx.ModelProto:
    try:
        model = onnx.load_model(str(Path(path)), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError, and whatever else a damaged file raises
        raise ModelRefused("file: is not a valid ONNX file (truncated, or not an ONNX model)") from None
    if not model.graph.node:
        raise ModelRefused("file: is not a valid ONNX file (its graph has no nodes)")
    return model


def image_input(model: onnx.ModelProto) -> ImageInput:
    """The one graph input that is not a weight, which must be (batch, channels, height, width) float."""
    weights = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    if len(inputs) != 1:
        raise ModelRefused(f"file: the graph takes {len(inputs)} inputs; it must take one image, (N, C, H, W)")
    value = inputs[0]
    tensor = value.type.tensor_type
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]
    if not value.type.HasField("tensor_type") or tensor.elem_type != TensorProto.FLOAT or len(dims) != 4 \
            or dims[1] not in IMAGE_CHANNELS:
        raise ModelRefused(f"file: the graph's input {value.name!r} is {_described(value)}, not an image "
                           f"(N, C, H, W) of float with {' or '.join(map(str, IMAGE_CHANNELS))} channels")
    return ImageInput(value.name, dims[1], dims[2] or None, dims[3] or None)


def _described(value: onnx.ValueInfoProto) -> str:
    tensor = value.type.tensor_type
    dims = ", ".join(str(dim.dim_value) if dim.HasField("dim_value") else dim.dim_param or "?"
                     for dim in tensor.shape.dim)
    return f"({dims}) of {TensorProto.DataType.Name(tensor.elem_type).lower()}"


def _check_opsets(model: onnx.ModelProto) -> None:
    if model.functions:
        raise ModelRefused(f"file: defines its own functions ({model.functions[0].name}); only standard ops run")
    opsets = {entry.domain: entry.version for entry in model.opset_import}
    if other := [domain for domain in opsets if domain not in DOMAINS]:
        raise ModelRefused(f"file: imports operator domain {other[0]!r}; only the standard ONNX domain runs")
    version = next((opsets[domain] for domain in DOMAINS if domain in opsets), None)
    if version not in OPSETS:
        raise ModelRefused(f"file: opset {version}, outside {OPSETS.start}-{OPSETS.stop - 1}; export with "
                           f"opset_version=17")


def _check_tensors(model: onnx.ModelProto, max_params: int) -> int:
    """Every weight and constant: data inside the file, as many values as its shape declares, bounded."""
    params = 0
    for tensor in _tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "?")
            raise ModelRefused(f"file: tensor {tensor.name!r} keeps its data in another file ({location[:80]!r}); "
                               f"export with the weights inside the .onnx file")
        declared = int(np.prod([int(dim) for dim in tensor.dims], dtype=object))
        if any(dim < 0 for dim in tensor.dims) or declared > MAX_TENSOR_VALUES:
            raise ModelRefused(f"file: tensor {tensor.name!r} declares shape {tuple(tensor.dims)}, over "
                               f"{MAX_TENSOR_VALUES} values")
        held = _held_values(tensor)
        if held != declared:
            raise ModelRefused(f"file: tensor {tensor.name!r} declares shape {tuple(tensor.dims)} ({declared} "
                               f"values) but holds {held}")
        if tensor.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16):
            params += declared
    if params > max_params:
        raise ModelRefused(f"file: {params} parameters, over the limit of {max_params} (FEATUREVIS_MODEL_MAX_PARAMS)")
    return params


def _tensors(model: onnx.ModelProto):
    if model.graph.sparse_initializer:
        raise ModelRefused("file: holds sparse weights; export them dense")
    yield from model.graph.initializer
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t


def _held_values(tensor: onnx.TensorProto) -> int:
    if tensor.HasField("raw_data"):
        size = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        return len(tensor.raw_data) // size
    return len(getattr(tensor, onnx.helper.tensor_dtype_to_field(tensor.data_type)))  # float16: one per int32


def _check_nodes(model: onnx.ModelProto) -> None:
    """Standard ops featurevis implements, each reading only what is there when it runs."""
    graph = model.graph
    if len(graph.node) > MAX_NODES:
        raise ModelRefused(f"file: {len(graph.node)} nodes, over {MAX_NODES}")
    known = {tensor.name for tensor in graph.initializer} | {value.name for value in graph.input} | {""}
    for node in graph.node:
        where = f"node {node.name or node.op_type!r}"
        if node.domain not in DOMAINS:
            raise ModelRefused(f"file: {where} is {node.op_type} of domain {node.domain!r}; only standard ops run")
        if node.op_type not in OPS:
            raise ModelRefused(f"file: {where} is a {node.op_type}, an op featurevis cannot run "
                               f"(docs/onnx.md lists the {len(OPS)} it runs)")
        if any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for attribute in node.attribute):
            raise ModelRefused(f"file: {where} holds a subgraph; only flat graphs run")
        _check_attributes(node, where)
        if missing := [name for name in node.input if name not in known]:
            raise ModelRefused(f"file: {where} reads {missing[0]!r}, which no earlier node produces (a truncated "
                               f"or unsorted graph)")
        known.update(node.output)
    if missing := [value.name for value in graph.output if value.name not in known]:
        raise ModelRefused(f"file: the graph's output {missing[0]!r} is produced by no node (a truncated graph)")
    if not graph.output:
        raise ModelRefused("file: the graph has no outputs")


def _check_attributes(node: onnx.NodeProto, where: str) -> None:
    attrs = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
    if node.op_type == "Resize":
        for name, default, known in (("mode", "nearest", RESIZE_MODES),
                                     ("coordinate_transformation_mode", "half_pixel", RESIZE_COORDINATES),
                                     ("nearest_mode", "round_prefer_floor", NEAREST_MODES)):
            if (value := attrs.get(name, default.encode()).decode()) not in known:
                raise ModelRefused(f"file: {where} resizes with {name} {value!r}; featurevis runs "
                                   f"{', '.join(sorted(known))}")
        if attrs.get("antialias") or attrs.get("keep_aspect_ratio_policy", b"stretch") != b"stretch":
            raise ModelRefused(f"file: {where} resizes with antialias or a kept aspect ratio; featurevis runs "
                               f"plain resizing")
    if node.op_type == "Pad" and (mode := attrs.get("mode", b"constant").decode()) not in PAD_MODES:
        raise ModelRefused(f"file: {where} pads with mode {mode!r}; featurevis runs constant, reflect and edge")
    if node.op_type in ("Conv", "MaxPool", "AveragePool") and len(attrs.get("kernel_shape", [1, 1])) != 2:
        raise ModelRefused(f"file: {where} is a {len(attrs['kernel_shape'])}-D {node.op_type}; featurevis runs 2-D ones")
