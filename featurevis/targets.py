"""What a job can target in a live Keras model: every layer, nested ones by path, and the class logits.

Models people bring are seldom flat. A fine-tuned Keras Application is one
layer of the model that holds it (`base = MobileNetV2(include_top=False); x =
base(inputs)`), and Sequential feature extractors sit inside Sequential
models. Every layer inside a nested model, at any depth, is a target, named by
its path (`mobilenetv2_0.35_96/block_6_expand`): Keras 3 forbids '/' in layer
names, so a path is never ambiguous. A nested layer's output lives in its own
model's graph; `output_of` calls that model's truncated copy on the tensor the
outer graph feeds it, so a job computes what its target needs and no more.

The class target is the value that enters the model's final activation,
whatever the head: a Dense layer with softmax or sigmoid, an Activation or
Softmax layer after global pooling of a 1x1 convolution (mini-Xception,
SqueezeNet), either followed by Flatten or Reshape; a model whose output has
no final activation gives its output as the logits.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import keras

SEPARATOR = "/"
AUTO_CONV = re.compile(r"conv2d(?:_(\d+))?")  # the names Keras gives Conv2D layers it names itself
# Layers between the class scores and the output that only move values around: the logits go through them too.
RESHAPING = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout, keras.layers.Identity)
ACTIVATIONS = {"softmax": "softmax", "sigmoid": "sigmoid"}
# Layers that turn 0..255 pixels into what the network was trained on, when a model starts with them.
PREPROCESSING = (keras.layers.Rescaling, keras.layers.Normalization, keras.layers.Resizing, keras.layers.CenterCrop)
AUGMENTATION = (keras.layers.RandomFlip, keras.layers.RandomRotation, keras.layers.RandomZoom,
                keras.layers.RandomTranslation, keras.layers.RandomContrast, keras.layers.RandomBrightness)


class Found(NamedTuple):
    path: str  # the layer's name, prefixed by the nested models it sits in
    layer: keras.layers.Layer


@dataclass(frozen=True)
class ClassHead:
    """The model's class logits, or why it has none."""

    logits: keras.KerasTensor | None  # (batch, classes) in the model's graph
    classes: int
    activation: str | None  # "softmax", "sigmoid", or None: the output itself is the logits
    layer: str | None  # the layer the logits come from, by path
    value: str | None  # which of its values: "Dense (pre-activation)", "GlobalAveragePooling2D (output)"
    reason: str | None = None  # where logits is None: why no class vector could be found


def all_layers(model: keras.Model) -> list[Found]:
    """Every layer but inputs and the nested models themselves, in model.layers order with nested models'
    layers in their place, depth first. A nested model called more than once in its model's graph has no
    single output per layer: it is left out (its layers would be ambiguous targets)."""
    found = []
    graph = _graph(model)
    for layer in _in_graph_order(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            if len(_nodes(graph, layer)) == 1:
                found += [Found(f"{layer.name}{SEPARATOR}{inner.path}", inner.layer) for inner in all_layers(layer)]
            continue
        found.append(Found(layer.name, layer))
    return found


def _in_graph_order(layers: list[keras.layers.Layer]) -> list[keras.layers.Layer]:
    """A model built from an ONNX graph (featurevis/onnxgraph.py) lists its layers in the graph's node order,
    which its `conv_id`s and `models show` follow; a Keras model keeps its own."""
    if not any(hasattr(layer, "graph_index") for layer in layers):
        return layers
    return sorted(layers, key=lambda layer: getattr(layer, "graph_index", -1))


def target_name(found: Found) -> str:
    """What a job calls a layer: its path, or for an ONNX node the module path the exporter gave it."""
    return getattr(found.layer, "target_name", found.path)


def layer_type(layer: keras.layers.Layer) -> str:
    """A Keras layer's class name, or an ONNX node's op type."""
    return getattr(layer, "op_type", type(layer).__name__)


def is_convolution(layer: keras.layers.Layer) -> bool:
    """What `conv_id` counts: Keras' Conv2D layers, and an ONNX graph's Conv nodes."""
    return type(layer) is keras.layers.Conv2D or getattr(layer, "op_type", None) == "Conv"


def spatial_layers(model: keras.Model) -> list[Found]:
    """The layers whose output is (batch, height, width, channels): what `layer` may name."""
    return [found for found in all_layers(model) if _maps(model, found.path)]


def _maps(model: keras.Model, path: str) -> bool:
    head, _, rest = path.partition(SEPARATOR)
    nodes = _nodes(_graph(model), model.get_layer(head))
    if len(nodes) != 1:  # a layer used at several places has no single output
        return False
    if rest:
        return _maps(model.get_layer(head), rest)
    shape = nodes[0].output_tensors[0].shape if len(nodes[0].output_tensors) == 1 else ()
    return len(shape) == 4 and shape[-1] is not None


def _graph(model: keras.Model) -> keras.Model:
    """The Functional graph a model's layers are wired in: its own, or the one a Sequential model builds (a
    Sequential's layers carry a node for every time it was built; only the graph's node is the model's)."""
    return getattr(model, "_functional", None) or model


def _nodes(graph: keras.Model, layer: keras.layers.Layer) -> list:
    """The calls of `layer` inside `graph`."""
    return [node for nodes in graph._nodes_by_depth.values() for node in nodes if node.operation is layer]


def _call(model: keras.Model, head: str):
    [node] = _nodes(_graph(model), model.get_layer(head))
    return node


def _fed(node):
    tensors = node.input_tensors
    return tensors[0] if len(tensors) == 1 else tensors


def _inputs_of(model: keras.Model):
    inputs = _graph(model).inputs
    return inputs[0] if len(inputs) == 1 else inputs


def output_of(model: keras.Model, path: str) -> keras.KerasTensor:
    """The output of the layer at `path` as a tensor of `model`'s own graph (connected to model.inputs).

    A top-level layer's is its output there; a nested one's is that nested model, truncated at the layer,
    called on what the outer graph feeds the nested model, so the truncated network computes nothing past the
    layer."""
    head, _, rest = path.partition(SEPARATOR)
    node = _call(model, head)
    if not rest:
        return node.output_tensors[0]
    nested = model.get_layer(head)
    return keras.Model(_inputs_of(nested), output_of(nested, rest))(_fed(node))


def outputs_of(model: keras.Model, paths: list[str]) -> dict[str, keras.KerasTensor]:
    """Many layers' outputs at once, each nested model called once for all of its layers (to read shapes:
    a model built on these computes every nested layer, so jobs use output_of)."""
    grouped: dict[str, list[str]] = {}
    found = {}
    for path in paths:
        head, _, rest = path.partition(SEPARATOR)
        if rest:
            grouped.setdefault(head, []).append(rest)
        else:
            found[path] = _call(model, head).output_tensors[0]
    for head, rests in grouped.items():
        nested = model.get_layer(head)
        inner = outputs_of(nested, rests)
        called = keras.Model(_inputs_of(nested), [inner[rest] for rest in rests])(_fed(_call(model, head)))
        called = called if isinstance(called, (list, tuple)) else [called]
        found.update({f"{head}{SEPARATOR}{rest}": tensor for rest, tensor in zip(rests, called)})
    return {path: found[path] for path in paths}


def conv_layers_in_creation_order(model: keras.Model) -> list[Found]:
    """The Conv2D layers, nested ones included, in the order `conv_id` indexes: Keras' creation order (an
    ONNX graph's Conv nodes: the graph's order).

    Keras numbers auto-named layers conv2d, conv2d_1, ... as it creates them, so
    where all are auto-named the numbers give the order (model.layers is a
    traversal order instead: InceptionV3's 6th there is conv2d_8); where any is
    named, the model's own order, nested layers in their place."""
    layers = [found for found in all_layers(model) if is_convolution(found.layer)]
    if layers and all(AUTO_CONV.fullmatch(found.layer.name) for found in layers):
        return sorted(layers, key=lambda found: int(AUTO_CONV.fullmatch(found.layer.name).group(1) or 0))
    return layers


def class_head(model: keras.Model) -> ClassHead:
    """The value entering the model's final softmax or sigmoid, per output unit; the output where none."""
    if len(model.outputs) != 1:
        return _no_head(f"the model has {len(model.outputs)} outputs; classes are read from a single one")
    output = model.outputs[0]
    if len(output.shape) != 2 or output.shape[-1] is None:
        return _no_head(f"its output is {_shape(output)}, not a vector of class scores")
    reshaping = []
    tensor = output
    while True:
        layer = tensor._keras_history.operation
        if isinstance(layer, RESHAPING) and len(_inputs(layer, tensor)) == 1:
            reshaping.append(layer)
            tensor = _inputs(layer, tensor)[0]
            continue
        break
    if isinstance(layer, keras.Model):  # a whole classifier used as a layer: its own head, called here
        inner = class_head(layer)
        if inner.activation is None:
            return _output_head(output, layer)
        fed = _inputs(layer, tensor)
        logits = keras.Model(_inputs_of(layer), inner.logits)(fed[0] if len(fed) == 1 else fed)
        head = ClassHead(None, 0, inner.activation, f"{layer.name}{SEPARATOR}{inner.layer}", inner.value)
    else:
        activation = _final_activation(layer)
        if activation is None:
            return _output_head(output, layer)
        if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
            logits = _inputs(layer, tensor)[0]
            source = logits._keras_history.operation
            head = ClassHead(None, 0, activation, _named(source), f"{layer_type(source)} (output)")
        else:
            logits = _linear_twin(layer)(_inputs(layer, tensor)[0])
            head = ClassHead(None, 0, activation, layer.name, f"{type(layer).__name__} (pre-activation)")
    for again in reversed(reshaping):
        logits = again(logits)
    if tuple(logits.shape) != tuple(output.shape):
        return _no_head(f"the value before its {head.activation} is {_shape(logits)}, not the output's "
                        f"{_shape(output)}")
    return ClassHead(logits, int(output.shape[-1]), head.activation, head.layer, head.value)


def _output_head(output, layer) -> ClassHead:
    """No final activation: the output is the logits."""
    value = "pre-activation" if hasattr(layer, "activation") else "output"
    return ClassHead(output, int(output.shape[-1]), None, _named(layer), f"{layer_type(layer)} ({value})")


def _named(layer: keras.layers.Layer) -> str:
    return getattr(layer, "target_name", layer.name)


def _no_head(reason: str) -> ClassHead:
    return ClassHead(None, 0, None, None, None, reason)


def _shape(tensor) -> str:
    return "(" + ", ".join("None" if size is None else str(size) for size in tensor.shape) + ")"


def _inputs(layer: keras.layers.Layer, output) -> list:
    """The tensors the call that made `output` read."""
    node = layer._inbound_nodes[output._keras_history.node_index]
    return list(node.input_tensors)


def _final_activation(layer) -> str | None:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    function = getattr(layer, "activation", None)
    return ACTIVATIONS.get(getattr(function, "__name__", None)) if callable(function) else None


def _linear_twin(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The same layer without its activation, sharing its weights: maximizing a class raises its logit rather
    than squeezing the others."""
    twin = type(layer).from_config({**layer.get_config(), "activation": "linear", "name": f"{layer.name}_logits"})
    twin.build(layer.input.shape)
    twin.set_weights(layer.get_weights())
    return twin


def preprocessing_layers(model: keras.Model) -> list[str]:
    """The layers a model starts with that turn pixels into its training inputs (Rescaling, Normalization,
    Resizing, CenterCrop; augmentation layers between them pass pictures through at inference)."""
    found = []
    for layer in all_layers(model):
        if isinstance(layer.layer, PREPROCESSING):
            found.append(f"{layer.path} ({type(layer.layer).__name__})")
        elif not isinstance(layer.layer, AUGMENTATION):
            break
    return found
