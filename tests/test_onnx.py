"""PyTorch models through ONNX: graphs as the legacy exporter writes them (tests/onnx_models.py), registered through
the CLI against the real worker like a Keras file, shown, visualized by every method, served in atlases, and
held to onnxruntime: what a job computes on an inner node and on the logits is recomputed here with onnxruntime
from the file itself. Refused files (an op the interpreter does not run, a truncated file, external data, no
image input, an oversized tensor, a node that computes otherwise than onnxruntime) are refused in one line and
leave nothing in the registry.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from featurevis import modelcheck, onnxcheck
from featurevis.registry import ModelRefused
from tests import onnx_models

METHODS = ("gradient_ascent", "robust", "maco")


class Expected:
    """What each graph of tests/onnx_models.py should register as: an inner node by its module path, the
    node's own name, and its classes."""

    def __init__(self, inner: str, node: str, classes: int, activation: str | None = None):
        self.inner, self.node, self.classes, self.activation = inner, node, classes, activation


EXPECTED = {
    "resnet_onnx": Expected("layer2/layer2.0/downsample/downsample.0", "/layer2/layer2.0/downsample/downsample.0/Conv",
                            5),
    "resnet_bn_onnx": Expected("layer2/layer2.0/bn2", "/layer2/layer2.0/bn2/BatchNormalization", 5),
    "mobilenet_v2_onnx": Expected("features/features.2/conv/conv.1/conv.1.0",
                                  "/features/features.2/conv/conv.1/conv.1.0/Conv", 5),
    "efficientnet_onnx": Expected("features/features.2/features.2.0/block/block.2",
                                  "/features/features.2/features.2.0/block/block.2/Mul", 5, "softmax"),
    "yolo_onnx": Expected("model.2/m.0/cv2/act", "/model.2/m.0/cv2/act/Mul", 0),
}


def _name(graph: str) -> str:
    return graph.replace("_", "-")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("onnx")
    return {name: onnx_models.save(build(), folder / f"{name}.onnx") for name, build in onnx_models.BUILDERS.items()}


@pytest.fixture(scope="module")
def registered(files, run_cli) -> dict[str, str]:
    said = {}
    for name, path in files.items():
        done = run_cli("models", "register", _name(name), "--file", str(path))
        assert done.returncode == 0, (name, done.stderr)
        said[name] = done.stderr
    return said


def _onnxruntime(path, pixels_nhwc: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    """Values of the named ONNX tensors for preprocessed NHWC pictures, as onnxruntime computes them."""
    model = onnx.load(str(path))
    model.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in outputs
                              if name not in {output.name for output in model.graph.output})
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    image = session.get_inputs()[0].name
    return session.run(outputs, {image: np.transpose(pixels_nhwc, (0, 3, 1, 2)).astype(np.float32)})


@pytest.mark.parametrize("name", list(EXPECTED))
def test_models_show_lists_nodes_by_module_path_conv_ids_in_graph_order(producer_api, run_cli, registered, files,
                                                                        name):
    expected = EXPECTED[name]
    info = producer_api.model(_name(name))
    assert f"({len(info.conv_layers)} convolutions)" in registered[name]
    graph = onnx.load(str(files[name])).graph
    convs = [node.name for node in graph.node if node.op_type == "Conv"]
    assert [layer.node for layer in info.conv_layers] == convs[:len(info.conv_layers)]  # graph order
    assert info.layer(expected.inner).node == expected.node and info.layer(expected.node).name == expected.inner
    assert info.preprocess.kind == "torch" and info.input_shape == ((64, 64, 3) if name == "yolo_onnx" else (32, 32, 3))
    assert info.classes == expected.classes and info.class_activation == expected.activation
    shown = run_cli("models", "show", _name(name)).stdout
    assert f"onnx file      input {'x'.join(map(str, info.input_shape))}" in shown
    assert f"layers ({len(convs)} Conv, conv_id 0..{len(convs) - 1})" in shown
    assert re.search(rf"^ +\d*  {re.escape(expected.inner)} +\w+ +\d+ ", shown, re.M), shown
    if not expected.classes:
        assert info.no_classes == "its output is (None, 12, 320), not a vector of class scores"


@pytest.mark.parametrize("name", ["resnet_bn_onnx", "efficientnet_onnx", "yolo_onnx"])
def test_an_inner_node_and_the_logits_are_what_onnxruntime_computes(stack, producer_api, registered, files, name):
    expected = EXPECTED[name]
    info = producer_api.model(_name(name))
    scale, offset = (np.array(part, dtype="float32") for part in (info.preprocess.scale, info.preprocess.offset))

    def run(fields: dict) -> tuple[dict, np.ndarray]:
        result = producer_api.enqueue({"model": info.name, "iterations": 3, "seed": 2, **fields}).wait(timeout=300)
        meta = json.loads((stack.results_dir / result.meta).read_text())
        return meta, np.load(stack.results_dir / result.array)[None] * scale + offset

    meta, pixels = run({"layer": expected.inner, "feature": 1})
    tensor = next(node.output[0] for node in onnx.load(str(files[name])).graph.node if node.name == expected.node)
    [value] = _onnxruntime(files[name], pixels, [tensor])
    assert meta["quality"]["objective"] == pytest.approx(float(value[0, 1].mean()), rel=1e-3, abs=1e-4)
    by_node = producer_api.enqueue({"model": info.name, "layer": expected.node, "feature": 1, "iterations": 3,
                                    "seed": 2})
    assert by_node.specs[0].layer == expected.inner and by_node.wait(timeout=300).cached  # the same job
    if expected.classes:
        meta, pixels = run({"class": 2})
        logits = "/classifier/classifier.1/Gemm_output_0" if expected.activation else "output"
        [value] = _onnxruntime(files[name], pixels, [logits])
        assert meta["quality"]["objective"] == pytest.approx(float(value[0, 2]), rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_method_climbs_and_a_four_unit_atlas_is_served(stack, producer_api, registered, name, tmp_path):
    expected = EXPECTED[name]
    info = producer_api.model(_name(name))
    for method in METHODS:
        result = producer_api.enqueue({"model": info.name, "layer": expected.inner, "feature": 0, "method": method,
                                       "iterations": 8, "seed": 3}).wait(timeout=300)
        loss = json.loads((stack.results_dir / result.meta).read_text())["loss"]
        assert loss[-1] > loss[1], (method, loss)
    pictures = np.random.default_rng(5).integers(0, 256, (10, *info.input_shape), dtype=np.uint8)
    np.savez(tmp_path / "dataset.npz", images=pictures)
    producer_api.add_dataset(info.name, tmp_path / "dataset.npz")
    job = producer_api.atlas({"model": info.name, "layers": [expected.inner], "units": 4, "iterations": 2, "seed": 1})
    job.wait(timeout=600)
    units = json.loads((stack.results_dir / job.page).parent.joinpath(
        expected.inner.replace("/", "~"), "units.json").read_text())
    assert sorted(int(feature) for feature in units) == [0, 1, 2, 3]
    assert all(unit["examples"]["top"] for unit in units.values())


def _every_target(producer_api, name: str, method: str = "gradient_ascent") -> None:
    info = producer_api.model(_name(name))
    every = [layer.name for layer in info.layers] + (["logits"] if info.classes else [])
    atlas = producer_api.atlas({"model": info.name, "layers": every, "units": 1, "iterations": 2, "seed": 1,
                                "method": method})
    assert atlas.wait(timeout=1800).done == len(every), (name, method)


def test_every_offered_target_works(producer_api, registered):
    """Every node `models show` lists, and the logits, one unit each, on the ResNet-style graph; every graph by
    every method in `make test-all`."""
    _every_target(producer_api, "resnet_onnx")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_offered_target_works_for_every_method(producer_api, registered, name):
    for method in METHODS:
        _every_target(producer_api, name, method)


def test_a_job_on_an_early_node_computes_nothing_past_it():
    """The network a step on `conv1` is built from holds the layers up to it: the rest of the graph is not in it."""
    import keras

    from featurevis import onnxgraph, targets

    network = onnxgraph.build(onnx_models.resnet(layers=(2, 2)))
    spatial = {targets.target_name(found): found for found in targets.spatial_layers(network)}
    early = keras.Model(network.inputs[0], targets.output_of(network, spatial["conv1"].path))
    assert {layer.op_type for layer in early.layers if isinstance(layer, onnxgraph.OnnxNode)} == {"Conv"}
    assert len(early.layers) == 2 and len(network.layers) > 20


def test_less_common_ops_match_onnxruntime():
    """Reflect and edge padding, grouped convolution, ceil-mode and padded pooling, bilinear resizing at a scale
    that is not output / input, PReLU, HardSwish, Slice, Transpose and a Shape-computed Reshape."""
    from featurevis import onnxgraph

    model = onnx_models.less_common_ops()
    assert 0 < onnxgraph.verify(model, onnxgraph.build(model)) < 1


TORCH_EXPORTS = Path(__file__).parent / "data" / "torch_exports"  # scripts/export_torch_samples.py, PyTorch 2.13
# Each file PyTorch's legacy exporter wrote: some targets it offers, its classes and their final activation.
TORCH_EXPECTED = {
    "resnet": (["conv1", "maxpool", "layer1/layer1.0/relu_1", "layer2/layer2.0/downsample/downsample.0", "avgpool"],
               5, None),
    "mbconv": (["features/features.1/features.1.0", "features/features.2/fc1", "features/features.2",
                "features/features.3/features.3.2"], 5, "softmax"),
    "yolo": (["model.0", "model.1/cv1", "model.1/Slice_1", "model.1", "model.4"], 0, None),
    "odd": (["Pad", "conv", "prelu", "AveragePool", "Resize"], 4, None),
}


@pytest.mark.parametrize("name", list(TORCH_EXPECTED))
def test_pytorch_exports_build_and_match_onnxruntime(name):
    """Files PyTorch itself exported (torch.onnx.export(..., opset_version=17, dynamo=False)): checked, built,
    every node within tolerance of onnxruntime, targets named by module path, the classes found."""
    from featurevis import onnxgraph, targets

    model, _ = onnxcheck.check_file(TORCH_EXPORTS / f"{name}.onnx", modelcheck.Limits.from_env().max_params)
    network = onnxgraph.build(model)
    assert 0 < onnxgraph.verify(model, network) < 1
    offered, classes, activation = TORCH_EXPECTED[name]
    names = [targets.target_name(found) for found in targets.spatial_layers(network)]
    assert set(offered) <= set(names) and len(set(names)) == len(names), names
    head = targets.class_head(network)
    assert (head.classes, head.activation) == (classes, activation)


def test_a_pytorch_export_serves_its_class_logits_through_the_cli(stack, run_cli, producer_api):
    """PyTorch's own export, registered as a user would: a class job climbs the value entering its softmax."""
    path = TORCH_EXPORTS / "mbconv.onnx"
    done = run_cli("models", "register", "torch-mbconv", "--file", str(path))
    assert done.returncode == 0, done.stderr
    info = producer_api.model("torch-mbconv")
    assert (info.classes, info.class_activation, info.logits_layer) == (5, "softmax", "classifier/classifier.1")
    result = producer_api.enqueue({"model": "torch-mbconv", "class": 3, "iterations": 3, "seed": 1}).wait(timeout=300)
    meta = json.loads((stack.results_dir / result.meta).read_text())
    scale, offset = (np.array(part, dtype="float32") for part in (info.preprocess.scale, info.preprocess.offset))
    pixels = np.load(stack.results_dir / result.array)[None] * scale + offset
    [logits] = _onnxruntime(path, pixels, ["/classifier/classifier.1/Gemm_output_0"])
    assert meta["quality"]["objective"] == pytest.approx(float(logits[0, 3]), rel=1e-3, abs=1e-4)


def test_the_interpreter_runs_exactly_the_ops_the_check_allows():
    from featurevis import onnxgraph

    assert set(onnxgraph.IMPLEMENTATIONS) | onnxgraph.FOLDED == onnxcheck.OPS
    assert not set(onnxgraph.IMPLEMENTATIONS) & onnxgraph.FOLDED


def test_the_producer_registers_an_onnx_file_without_onnx_or_tensorflow(stack, files):
    code = ("import sys, producer; "
            f"print(producer.Producer({stack.redis_url!r}).register_model('plain-onnx', file={str(files['resnet_onnx'])!r})); "
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'onnx', 'onnxruntime')]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", code], env=stack.env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_open_input_size_is_asked_for_then_fixed(stack, run_cli, producer_api, tmp_path):
    model = onnx_models.resnet()
    for index, name in ((2, "height"), (3, "width")):
        dim = model.graph.input[0].type.tensor_type.shape.dim[index]
        dim.Clear()
        dim.dim_param = name
    path = onnx_models.save(model, tmp_path / "open.onnx")
    refused = run_cli("models", "register", "open-onnx", "--file", str(path))
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "error: input_size: the graph leaves the height and width of its input 'input' open; give them "
        "(--input-size H,W)")
    assert run_cli("models", "register", "open-onnx", "--file", str(path), "--input-size", "48,40").returncode == 0
    info = producer_api.model("open-onnx")
    assert info.input_shape == (48, 40, 3) and info.source["input_size"] == [48, 40]
    producer_api.enqueue({"model": "open-onnx", "class": 1, "iterations": 2, "seed": 1}).wait(timeout=300)


# --- refusals ---------------------------------------------------------------------------------------------------


def _with_node(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.ModelProto:
    """The graph with `node` before its last node, reading and replacing that node's first input."""
    last = model.graph.node[-1]
    node.input[0] = last.input[0]
    node.output[0] = "/inserted_output_0"
    last.input[0] = "/inserted_output_0"
    model.graph.node.insert(len(model.graph.node) - 1, node)
    return model


def _external(model: onnx.ModelProto) -> onnx.ModelProto:
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../../etc/passwd")
    return model


def _no_image(model: onnx.ModelProto) -> onnx.ModelProto:
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 10]))
    return model


def _oversized(model: onnx.ModelProto) -> onnx.ModelProto:
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(4, np.float32), "bomb"))
    bomb = model.graph.initializer[-1]
    del bomb.dims[:]
    bomb.dims.extend([2**20, 2**20])
    return model


def _unknown_resize(model: onnx.ModelProto) -> onnx.ModelProto:
    """A Resize with a coordinate mode the interpreter does not know: the node is refused, named."""
    node = next(node for node in model.graph.node if node.op_type == "Resize")
    for attribute in node.attribute:
        if attribute.name == "coordinate_transformation_mode":
            attribute.s = b"tf_half_pixel_for_nn"
    return model


REFUSALS = {
    "unsupported_op": (lambda: _with_node(onnx_models.resnet(), helper.make_node(
        "Einsum", ["x"], ["y"], name="/fc/Einsum", equation="ij->ij")),
        "file: node '/fc/Einsum' is a Einsum, an op featurevis cannot run (docs/onnx.md lists the "
        f"{len(onnxcheck.OPS)} it runs)"),
    "external_data": (lambda: _external(onnx_models.resnet()),
                      "file: tensor 'conv1.weight' keeps its data in another file ('../../../etc/passwd'); export "
                      "with the weights inside the .onnx file"),
    "no_image_input": (lambda: _no_image(onnx_models.resnet()),
                       "file: the graph's input 'input' is (1, 10) of float, not an image (N, C, H, W) of float "
                       "with 1 or 3 channels"),
    "oversized_tensor": (lambda: _oversized(onnx_models.resnet()),
                         "file: tensor 'bomb' declares shape (1048576, 1048576), over 268435456 values"),
    "unknown_resize_mode": (lambda: _unknown_resize(onnx_models.yolo()),
                            "file: node '/model.5/Resize' resizes with coordinate_transformation_mode "
                            "'tf_half_pixel_for_nn'; featurevis runs align_corners, asymmetric, half_pixel, "
                            "pytorch_half_pixel"),
}


@pytest.mark.parametrize("case", [*REFUSALS, "truncated"])
def test_a_refused_onnx_file_is_refused_in_one_line_and_leaves_nothing(stack, run_cli, tmp_path, case):
    path = tmp_path / f"{case}.onnx"
    if case == "truncated":
        whole = onnx_models.resnet().SerializeToString()
        path.write_bytes(whole[:len(whole) // 2])
        refusal = "file: is not a valid ONNX file (truncated, or not an ONNX model)"
    else:
        build, refusal = REFUSALS[case]
        path.write_bytes(build().SerializeToString())
    assert modelcheck.file_format(path) == modelcheck.ONNX  # recognized by content, refused for what it holds
    name = f"bad-{case.replace('_', '-')}"
    refused = run_cli("models", "register", name, "--file", str(path))
    assert refused.returncode == 2 and refused.stderr.strip() == f"error: {refusal}", refused.stderr
    assert not (stack.results_dir / "models" / name).exists()


def _opset12_softmax() -> onnx.ModelProto:
    """Softmax over channels at opset 12, where ONNX flattens (C, H, W) into one axis before the softmax: an
    old semantics the interpreter does not reproduce, so the built node computes otherwise than onnxruntime."""
    graph = onnx_models.Graph(seed=6)
    x = graph.one("Softmax", [graph.conv("input", "/conv1", 3, 4, 3)], "/attention/Softmax", axis=1)
    model = graph.model(graph.head(x, 4, 3), 16)
    model.opset_import[0].version = 12
    return model


def test_a_node_that_computes_otherwise_than_onnxruntime_is_refused_naming_it(stack, run_cli, tmp_path):
    path = onnx_models.save(_opset12_softmax(), tmp_path / "old.onnx")
    refused = run_cli("models", "register", "old-softmax", "--file", str(path))
    assert refused.returncode == 2
    assert re.fullmatch(r"error: file: /attention/Softmax: differs from onnxruntime by [\d.e-]+ \(tolerance "
                        r"[\d.e-]+\); refused", refused.stderr.strip()), refused.stderr
    assert not (stack.results_dir / "models" / "old-softmax").exists()


def test_verification_names_the_first_node_that_differs():
    from featurevis import onnxgraph

    model = onnx_models.less_common_ops()
    network = onnxgraph.build(model)
    node = next(node for node in model.graph.node if node.op_type == "LeakyRelu")
    node.attribute[0].f = 0.3  # onnxruntime now computes another slope than the network was built with
    with pytest.raises(onnxgraph.NodeFailed, match=r"^/act1/LeakyRelu: differs from onnxruntime by [\d.e-]+ "
                                                    r"\(tolerance [\d.e-]+\)$"):
        onnxgraph.verify(model, network)


def test_the_check_alone_refuses_without_tensorflow(tmp_path):
    """onnxcheck is what the worker runs before the disposable process: no TensorFlow in it."""
    code = ("import sys; from featurevis import onnxcheck; "
            "sys.exit(1 if any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0
    path = tmp_path / "x.onnx"
    path.write_bytes(_with_node(onnx_models.resnet(), helper.make_node("NonMaxSuppression", ["x"], ["y"],
                                                                       name="/nms")).SerializeToString())
    with pytest.raises(ModelRefused, match=r"^file: node '/nms' is a NonMaxSuppression"):
        onnxcheck.check_file(path, modelcheck.Limits.from_env().max_params)
