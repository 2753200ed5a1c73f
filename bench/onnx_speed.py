"""Part 11 of `make bench` (`python -m bench.run --onnx` alone): a step on a model built from an ONNX graph
(featurevis/onnxgraph.py) against the same architecture built in Keras.

The graph is a ResNet-50 as torchvision's legacy export writes it (tests/onnx_models.py: Bottlenecks
[3, 4, 6, 3], 224x224, batch normalization folded into the convolutions); its Keras twin is built here from
the same weights, layer for layer (Conv2D with a bias, ReLU, Add, max-pooling after zero padding, average
pooling, Dense), so both compute the same values and only how they are built differs. Keras' own ResNet50
application (strides on its first 1x1 rather than the 3x3, batch normalization unfolded) is timed beside them
for reference. Each is timed by the service's compiled gradient-ascent step (the same compile_step a job
uses) at `layer3`'s output and at the logits, batch 1, median of a few 10-step runs.
"""
from __future__ import annotations

import statistics
import time

import keras
import numpy as np
import onnx
from onnx import numpy_helper

from featurevis import onnxgraph, targets, zoo
from featurevis.optvis import methods, objectives, render
from featurevis.registry import preprocess_from
from tests import onnx_models

STEPS, RUNS = 10, 5
LAYER3 = "/layer3/layer3.5/relu_2"  # the last block of layer3 (conv4_block6_out in Keras' ResNet50)
GOAL = 1.1  # the ONNX step's seconds over the Keras twin's, at most


def keras_twin(model: onnx.ModelProto) -> tuple[keras.Model, dict]:
    """The exported ResNet-50 rebuilt from Keras layers with the graph's own weights, and each ONNX value's
    Keras tensor."""
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    made: dict[str, object] = {}
    pixels = keras.Input((224, 224, 3))
    made["input"] = pixels
    for node in model.graph.node:
        inputs = [made.get(name) for name in node.input]
        attrs = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
        if node.op_type == "Conv":
            kernel = weights[node.input[1]]
            pad = attrs["pads"][0]
            x = keras.layers.ZeroPadding2D(pad)(inputs[0]) if pad else inputs[0]
            layer = keras.layers.Conv2D(kernel.shape[0], kernel.shape[2:], strides=attrs["strides"])
            y = layer(x)
            layer.set_weights([kernel.transpose(2, 3, 1, 0), weights[node.input[2]]])
        elif node.op_type == "Relu":
            y = keras.layers.ReLU()(inputs[0])
        elif node.op_type == "Add":
            y = keras.layers.Add()(inputs)
        elif node.op_type == "MaxPool":
            y = keras.layers.MaxPooling2D(3, 2)(keras.layers.ZeroPadding2D(1)(inputs[0]))
        elif node.op_type == "GlobalAveragePool":
            y = keras.layers.GlobalAveragePooling2D()(inputs[0])
        elif node.op_type == "Flatten":
            y = inputs[0]
        elif node.op_type == "Gemm":
            layer = keras.layers.Dense(weights[node.input[1]].shape[0])
            y = layer(inputs[0])
            layer.set_weights([weights[node.input[1]].T, weights[node.input[2]]])
        else:
            raise ValueError(f"the twin has no {node.op_type}")
        made[node.output[0]] = y
    return keras.Model(pixels, made[model.graph.output[0].name]), made


def _step_seconds(network: keras.Model, output) -> float:
    """Median seconds of one compiled gradient-ascent step (batch 1) on `network` truncated at `output`."""
    truncated = keras.Model(network.inputs[0], output)
    objective = objectives.weighted_logits if len(output.shape) == 2 else objectives.weighted_channels
    step = methods.BY_NAME["gradient_ascent"].compile_step(truncated, zoo.preprocessor(preprocess_from("torch", 3)),
                                                           objective, (224, 224, 3))
    weights = objectives.weights_matrix([{1: 1.0}], int(output.shape[-1]))
    render.run(step, [1], weights, 2)
    times = []
    for _ in range(RUNS):
        began = time.perf_counter()
        render.run(step, [1], weights, STEPS)
        times.append((time.perf_counter() - began) / STEPS)
    return statistics.median(times)


def _layer3(network: keras.Model, name: str):
    found = {targets.target_name(found): found for found in targets.spatial_layers(network)}
    return targets.output_of(network, found[name].path)


def run() -> dict:
    graph = onnx_models.resnet(layers=(3, 4, 6, 3), width=64, size=224, classes=1000, bottleneck=True)
    began = time.perf_counter()
    built = onnxgraph.build(graph)
    build_s = time.perf_counter() - began
    twin, twin_values = keras_twin(graph)
    picture = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
    difference = float(np.abs(built(picture).numpy() - twin(picture).numpy()).max())
    keras.utils.set_random_seed(0)
    application = keras.applications.ResNet50(weights=None)
    twin_layer3 = twin_values[f"{LAYER3}/Relu_output_0"]
    rows = {
        "layer3": {"onnx": _step_seconds(built, _layer3(built, LAYER3.strip("/"))),
                   "keras_twin": _step_seconds(twin, twin_layer3),
                   "keras_resnet50": _step_seconds(application, application.get_layer("conv4_block6_out").output)},
        "logits": {"onnx": _step_seconds(built, built.outputs[0]), "keras_twin": _step_seconds(twin, twin.outputs[0]),
                   "keras_resnet50": _step_seconds(application, application.outputs[0])},
    }
    for row in rows.values():
        row["onnx_over_twin"] = row["onnx"] / row["keras_twin"]
    return {"graph": "torchvision-style ResNet-50, 224x224, batch normalization folded", "build_s": build_s,
            "largest_output_difference_to_twin": difference, "steps": rows, "goal_onnx_over_twin": GOAL}


def print_rows(results: dict) -> None:
    onnx_results = results.get("onnx")
    if not onnx_results:
        return
    print(f"| ONNX ResNet-50: build s (largest output difference to its Keras twin) | {onnx_results['build_s']:.2f} "
          f"({onnx_results['largest_output_difference_to_twin']:.2g}) | |")
    for target, row in onnx_results["steps"].items():
        print(f"| ONNX step over the Keras twin's, {target} (ms: ONNX / twin / Keras ResNet50) | "
              f"{row['onnx_over_twin']:.2f} ({row['onnx'] * 1000:.0f} / {row['keras_twin'] * 1000:.0f} / "
              f"{row['keras_resnet50'] * 1000:.0f}) | <= {GOAL} |")
