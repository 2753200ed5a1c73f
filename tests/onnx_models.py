"""ONNX graphs as PyTorch's legacy exporter writes them, built with onnx's helper (no PyTorch here).

`torch.onnx.export(model.eval(), x, "m.onnx", opset_version=17, dynamo=False)` names each node after the module
that ran it (`/layer2/layer2.0/downsample/downsample.0/Conv`) and its output after the node (`..._output_0`),
writes images as NCHW with a batch of one, ReLU6 as Clip, SiLU as Sigmoid and Mul, and folds BatchNormalization
into the convolution before it unless asked not to. The builders below reproduce that for the blocks of
torchvision's ResNet, MobileNetV2 and EfficientNet and of Ultralytics' YOLOv8, with random weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def module(scope: str) -> str:
    """A scope's module as PyTorch names its parameters: `/layer1/layer1.0/conv1` -> `layer1.0.conv1`."""
    parts: list[str] = []
    for part in scope.strip("/").split("/"):
        if parts and part.startswith(parts[-1] + "."):
            parts[-1] = part
        else:
            parts.append(part)
    return ".".join(parts)


class Graph:
    """Nodes and weights of one exported graph, named the way the legacy exporter names them."""

    def __init__(self, seed: int = 0, fuse_bn: bool = True):
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.fuse_bn = fuse_bn

    def weight(self, name: str, array: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, outputs: int = 1, **attrs) -> list[str]:
        names = [f"{name}_output_{index}" for index in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, **attrs))
        return names

    def one(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        return self.node(op, inputs, name, **attrs)[0]

    # --- modules ---

    def conv(self, x: str, scope: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             bias: bool | None = None) -> str:
        """nn.Conv2d(padding=k // 2); a folded BatchNorm leaves a bias."""
        dotted = module(scope)
        fan_in = cin // groups * k * k
        w = self.rng.normal(0, np.sqrt(2 / fan_in), (cout, cin // groups, k, k)).astype(np.float32)
        inputs = [x, self.weight(f"{dotted}.weight", w)]
        if bias if bias is not None else self.fuse_bn:
            inputs.append(self.weight(f"{dotted}.bias", self.rng.normal(0, 0.1, cout).astype(np.float32)))
        return self.one("Conv", inputs, f"{scope}/Conv", kernel_shape=[k, k], strides=[stride, stride],
                        pads=[k // 2] * 4, group=groups, dilations=[1, 1])

    def bn(self, x: str, scope: str, channels: int) -> str:
        """nn.BatchNorm2d in eval mode, when the exporter keeps it (do_constant_folding=False, or training)."""
        if self.fuse_bn:
            return x
        dotted = module(scope)
        parts = [self.rng.uniform(0.5, 1.5, channels), self.rng.normal(0, 0.1, channels),
                 self.rng.normal(0, 0.1, channels), self.rng.uniform(0.5, 1.5, channels)]
        names = [self.weight(f"{dotted}.{part}", value.astype(np.float32))
                 for part, value in zip(("weight", "bias", "running_mean", "running_var"), parts)]
        return self.one("BatchNormalization", [x, *names], f"{scope}/BatchNormalization", epsilon=1e-5)

    def conv_bn(self, x, scope, cin, cout, k, stride=1, groups=1, conv="0", norm="1") -> str:
        """torchvision's Conv2dNormActivation without its activation: `scope/scope.0` and `scope/scope.1`."""
        last = scope.strip("/").split("/")[-1]
        y = self.conv(x, f"{scope}/{last}.{conv}", cin, cout, k, stride, groups)
        return self.bn(y, f"{scope}/{last}.{norm}", cout)

    def expand_and_depthwise(self, x: str, prefix: str, channels: int, hidden: int, stride: int,
                             activation) -> tuple[str, int]:
        """An inverted residual's start (torchvision's MobileNetV2 and EfficientNet): a 1x1 expansion where
        `hidden` > `channels`, then a 3x3 depthwise convolution, each normalized and activated; the output,
        and the index of the next part (`prefix.N`)."""
        part, last = 0, prefix.rsplit("/", 1)[-1]
        if hidden != channels:
            x = activation(self.conv_bn(x, f"{prefix}.0", channels, hidden, 1), f"{prefix}.0/{last}.0.2")
            part = 1
        x = activation(self.conv_bn(x, f"{prefix}.{part}", hidden, hidden, 3, stride, groups=hidden),
                       f"{prefix}.{part}/{last}.{part}.2")
        return x, part + 1

    def relu(self, x: str, scope: str) -> str:
        return self.one("Relu", [x], f"{scope}/Relu")

    def relu6(self, x: str, scope: str) -> str:
        low = self.weight(f"{scope}/Constant_low", np.array(0, np.float32))
        high = self.weight(f"{scope}/Constant_high", np.array(6, np.float32))
        return self.one("Clip", [x, low, high], f"{scope}/Clip")

    def silu(self, x: str, scope: str) -> str:
        gate = self.one("Sigmoid", [x], f"{scope}/Sigmoid")
        return self.one("Mul", [x, gate], f"{scope}/Mul")

    def head(self, x: str, features: int, classes: int, scope: str = "/fc", pool: str = "/avgpool",
             softmax: bool = False) -> str:
        pooled = self.one("GlobalAveragePool", [x], f"{pool}/GlobalAveragePool")
        flat = self.one("Flatten", [pooled], "/Flatten", axis=1)
        return self.head_from_flat(flat, classes, features, scope, softmax)

    def head_from_flat(self, flat: str, classes: int, features: int | None = None, scope: str = "/fc",
                       softmax: bool = False) -> str:
        """nn.Linear (a Gemm), after an optional softmax; `features` None: read from the graph's shapes."""
        if features is None:
            probe = helper.make_model(helper.make_graph(
                self.nodes, "probe", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 20, 20])],
                [helper.make_empty_tensor_value_info(flat)], self.weights),
                opset_imports=[helper.make_opsetid("", OPSET)])
            from onnx.reference import ReferenceEvaluator
            features = ReferenceEvaluator(probe).run(None, {"input": np.zeros((1, 3, 20, 20), np.float32)})[0].shape[1]
        dotted = module(scope)
        w = self.weight(f"{dotted}.weight", self.rng.normal(0, 1 / np.sqrt(features), (classes, features))
                        .astype(np.float32))
        b = self.weight(f"{dotted}.bias", np.zeros(classes, np.float32))
        logits = self.one("Gemm", [flat, w, b], f"{scope}/Gemm", alpha=1.0, beta=1.0, transB=1)
        return self.one("Softmax", [logits], "/Softmax", axis=1) if softmax else logits

    def model(self, output: str, size: int, output_name: str = "output") -> onnx.ModelProto:
        """The graph, its last node's output renamed as `output_names=[...]` does."""
        self.nodes[-1].output[list(self.nodes[-1].output).index(output)] = output_name
        graph = helper.make_graph(
            self.nodes, "main_graph", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
            [helper.make_empty_tensor_value_info(output_name)], self.weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pytorch",
                                  producer_version="2.9.0")
        model.ir_version = 8
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def resnet(layers=(1, 1), width: int = 8, size: int = 32, classes: int = 5, bottleneck: bool = False,
           fuse_bn: bool = True, seed: int = 0) -> onnx.ModelProto:
    """torchvision.models.resnet: a 7x7 stem, max-pooling, BasicBlocks (or Bottlenecks), average pool, fc."""
    g = Graph(seed, fuse_bn)
    x = g.relu(g.bn(g.conv("input", "/conv1", 3, width, 7, 2), "/bn1", width), "/relu")
    x = g.one("MaxPool", [x], "/maxpool/MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
              ceil_mode=0)
    channels = width
    expansion = 4 if bottleneck else 1
    for stage, blocks in enumerate(layers, start=1):
        planes = width * 2 ** (stage - 1)
        for index in range(blocks):
            scope = f"/layer{stage}/layer{stage}.{index}"
            stride = 2 if index == 0 and stage > 1 else 1
            out = planes * expansion
            y = g.relu(g.bn(g.conv(x, f"{scope}/conv1", channels, planes, 1 if bottleneck else 3,
                                   1 if bottleneck else stride), f"{scope}/bn1", planes), f"{scope}/relu")
            if bottleneck:
                y = g.relu(g.bn(g.conv(y, f"{scope}/conv2", planes, planes, 3, stride), f"{scope}/bn2", planes),
                           f"{scope}/relu_1")
                y = g.bn(g.conv(y, f"{scope}/conv3", planes, out, 1), f"{scope}/bn3", out)
            else:
                y = g.bn(g.conv(y, f"{scope}/conv2", planes, planes, 3), f"{scope}/bn2", planes)
            shortcut = x
            if stride != 1 or channels != out:
                shortcut = g.conv_bn(x, f"{scope}/downsample", channels, out, 1, stride)
            x = g.relu(g.one("Add", [y, shortcut], f"{scope}/Add"), f"{scope}/relu_{2 if bottleneck else 1}")
            channels = out
    return g.model(g.head(x, channels, classes), size)


def mobilenet_v2(size: int = 32, classes: int = 5, fuse_bn: bool = True, seed: int = 1) -> onnx.ModelProto:
    """torchvision.models.mobilenet_v2's blocks: ReLU6 as Clip, depthwise convolutions, residual Adds."""
    g = Graph(seed, fuse_bn)
    x = g.relu6(g.conv_bn("input", "/features/features.0", 3, 16, 3, 2), "/features/features.0/features.0.2")
    channels = 16
    for number, (expand, out, stride) in enumerate([(1, 8, 1), (4, 12, 2), (4, 12, 1)], start=1):
        scope = f"/features/features.{number}/conv"
        hidden = channels * expand
        y, part = g.expand_and_depthwise(x, f"{scope}/conv", channels, hidden, stride, g.relu6)
        y = g.conv(y, f"{scope}/conv.{part}", hidden, out, 1)
        y = g.bn(y, f"{scope}/conv.{part + 1}", out)
        x = g.one("Add", [x, y], f"/features/features.{number}/Add") if stride == 1 and channels == out else y
        channels = out
    x = g.relu6(g.conv_bn(x, "/features/features.4", channels, 32, 1), "/features/features.4/features.4.2")
    return g.model(g.head(x, 32, classes, scope="/classifier/classifier.1", pool=""), size)


def efficientnet(size: int = 32, classes: int = 5, fuse_bn: bool = True, seed: int = 2) -> onnx.ModelProto:
    """torchvision.models.efficientnet's MBConv: SiLU as Sigmoid x Mul, squeeze-excitation, a softmax head."""
    g = Graph(seed, fuse_bn)
    x = g.silu(g.conv_bn("input", "/features/features.0", 3, 16, 3, 2), "/features/features.0/features.0.2")
    channels = 16
    for number, (expand, out, stride) in enumerate([(1, 16, 1), (4, 24, 2)], start=1):
        scope = f"/features/features.{number}/features.{number}.0/block"
        hidden = channels * expand
        y, part = g.expand_and_depthwise(x, f"{scope}/block", channels, hidden, stride, g.silu)
        se = f"{scope}/block.{part}"
        squeezed = g.one("GlobalAveragePool", [y], f"{se}/avgpool/GlobalAveragePool")
        squeezed = g.silu(g.conv(squeezed, f"{se}/fc1", hidden, max(1, hidden // 4), 1, bias=True),
                          f"{se}/activation")
        scale = g.one("Sigmoid", [g.conv(squeezed, f"{se}/fc2", max(1, hidden // 4), hidden, 1, bias=True)],
                      f"{se}/scale_activation/Sigmoid")
        y = g.one("Mul", [scale, y], f"{se}/Mul")
        y = g.conv_bn(y, f"{scope}/block.{part + 1}", hidden, out, 1)
        x = g.one("Add", [y, x], f"/features/features.{number}/features.{number}.0/Add") \
            if stride == 1 and channels == out else y
        channels = out
    return g.model(g.head(x, channels, classes, scope="/classifier/classifier.1", softmax=True), size)


def yolo(size: int = 64, seed: int = 3) -> onnx.ModelProto:
    """Ultralytics YOLOv8's blocks: Conv (BN folded) + SiLU, C2f (Split, Bottlenecks, Concat), SPPF (MaxPools),
    nearest Resize and Concat, and a Detect-like head reshaped to (1, outputs, anchors): no classes."""
    g = Graph(seed, fuse_bn=True)

    def block(x, scope, cin, cout, k=1, stride=1):
        return g.silu(g.conv(x, f"{scope}/conv", cin, cout, k, stride), f"{scope}/act")

    def c2f(x, scope, cin, cout):
        y = block(x, f"{scope}/cv1", cin, cout)
        halves = g.node("Split", [y, g.weight(f"{scope}/split", np.array([cout // 2] * 2, np.int64))],
                        f"{scope}/Split", outputs=2, axis=1)
        inner = block(block(halves[1], f"{scope}/m.0/cv1", cout // 2, cout // 2, 3), f"{scope}/m.0/cv2",
                      cout // 2, cout // 2, 3)
        inner = g.one("Add", [halves[1], inner], f"{scope}/m.0/Add")
        joined = g.one("Concat", [halves[0], halves[1], inner], f"{scope}/Concat", axis=1)
        return block(joined, f"{scope}/cv2", 3 * cout // 2, cout)

    p1 = block("input", "/model.0", 3, 8, 3, 2)
    p2 = c2f(block(p1, "/model.1", 8, 16, 3, 2), "/model.2", 16, 16)
    p3 = block(p2, "/model.3", 16, 32, 3, 2)
    sppf = block(p3, "/model.4/cv1", 32, 16)
    pooled = [sppf]
    for index in range(3):
        pooled.append(g.one("MaxPool", [pooled[-1]], f"/model.4/m{'' if index == 0 else f'_{index}'}/MaxPool",
                            kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2], dilations=[1, 1], ceil_mode=0))
    p4 = block(g.one("Concat", pooled, "/model.4/Concat", axis=1), "/model.4/cv2", 64, 32)
    scales = g.weight("/model.5/Constant_output_0", np.array([1, 1, 2, 2], np.float32))
    up = g.one("Resize", [p4, "", scales], "/model.5/Resize", mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    p5 = c2f(g.one("Concat", [up, p2], "/model.6/Concat", axis=1), "/model.7", 48, 16)
    outputs = []
    for index, (feature, channels) in enumerate([(p5, 16), (p4, 32)]):
        detect = g.conv(block(feature, f"/model.8/cv2.{index}/cv2.{index}.0", channels, 16, 3),
                        f"/model.8/cv2.{index}/cv2.{index}.2", 16, 12, 1, bias=True)
        shape = g.weight(f"/model.8/Constant_{index}_output_0", np.array([1, 12, -1], np.int64))
        outputs.append(g.one("Reshape", [detect, shape], f"/model.8/Reshape{'' if index == 0 else f'_{index}'}"))
    return g.model(g.one("Concat", outputs, "/model.8/Concat_3", axis=2), size, "output0")


BUILDERS = {
    "resnet_onnx": lambda: resnet(),
    "resnet_bn_onnx": lambda: resnet(bottleneck=True, fuse_bn=False),
    "mobilenet_v2_onnx": lambda: mobilenet_v2(),
    "efficientnet_onnx": lambda: efficientnet(fuse_bn=False),
    "yolo_onnx": lambda: yolo(),
}


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def less_common_ops(seed: int = 4) -> onnx.ModelProto:
    """Ops the four families above do not use, each where an export puts it: reflect and edge padding, grouped
    (not depthwise) convolution, ceil-mode and padded average pooling with and without the padding counted,
    ceil-mode max pooling, bilinear resizing, LeakyReLU, HardSwish, PReLU, ReduceMean, Transpose and a
    Shape-computed Reshape (`x.view(x.size(0), -1)`), Slice, Softmax over channels."""
    g = Graph(seed)
    x = g.one("Pad", ["input", g.weight("pads", np.array([0, 0, 1, 2, 0, 0, 1, 2], np.int64))], "/pad/Pad",
              mode="reflect")
    x = g.conv(x, "/conv1", 3, 8, 3)
    x = g.one("LeakyRelu", [x], "/act1/LeakyRelu", alpha=0.1)
    x = g.conv(x, "/grouped", 8, 8, 3, groups=2)
    x = g.one("HardSwish", [x], "/act2/HardSwish")
    x = g.one("AveragePool", [x], "/pool1/AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
              ceil_mode=1, count_include_pad=1)
    x = g.one("PRelu", [x, g.weight("prelu.weight", g.rng.uniform(0, 0.3, (8, 1, 1)).astype(np.float32))],
              "/prelu/PRelu")
    x = g.one("AveragePool", [x], "/pool2/AveragePool", kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1],
              count_include_pad=0)
    x = g.one("MaxPool", [x], "/pool3/MaxPool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    x = g.one("Pad", [x, g.weight("pads2", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], "/pad2/Pad", mode="edge")
    x = g.one("Resize", [x, "", g.weight("scales", np.array([1, 1, 1.5, 1.5], np.float32))], "/up/Resize",
              mode="linear", coordinate_transformation_mode="pytorch_half_pixel")
    x = g.one("Softmax", [x], "/attention/Softmax", axis=1)
    x = g.one("Slice", [x, *(g.weight(f"slice.{part}", np.array(value, np.int64)) for part, value in
                             (("starts", [1]), ("ends", [-1]), ("axes", [2])))], "/crop/Slice")
    mean = g.one("ReduceMean", [x], "/squeeze/ReduceMean", axes=[2, 3], keepdims=1)
    x = g.one("Mul", [x, mean], "/squeeze/Mul")
    x = g.one("Transpose", [x], "/permute/Transpose", perm=[0, 1, 3, 2])
    shape = g.one("Shape", [x], "/Shape")
    batch = g.one("Gather", [shape, g.weight("zero", np.array(0, np.int64))], "/Gather", axis=0)
    batch = g.one("Unsqueeze", [batch, g.weight("axes0", np.array([0], np.int64))], "/Unsqueeze")
    target = g.one("Concat", [batch, g.weight("minus_one", np.array([-1], np.int64))], "/Concat", axis=0)
    flat = g.one("Reshape", [x, target], "/Reshape")
    return g.model(g.head_from_flat(flat, classes=4), 20)
