"""Writes tests/data/torch_exports/*.onnx: small PyTorch models exported by PyTorch's own legacy exporter, which
tests/test_onnx.py holds the interpreter to (tests/onnx_models.py writes graphs the same way by hand).

Needs PyTorch, which featurevis does not depend on (2.13.0+cpu wrote the files in the repository):
    python scripts/export_torch_samples.py [FOLDER]
"""
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)

class Basic(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__()
        s.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); s.bn1 = nn.BatchNorm2d(cout); s.relu = nn.ReLU(inplace=True)
        s.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); s.bn2 = nn.BatchNorm2d(cout)
        s.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride != 1 or cin != cout else None
    def forward(s, x):
        idt = x if s.downsample is None else s.downsample(x)
        out = s.relu(s.bn1(s.conv1(x))); out = s.bn2(s.conv2(out)); out += idt; return s.relu(out)

class ResNetish(nn.Module):
    def __init__(s):
        super().__init__()
        s.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False); s.bn1 = nn.BatchNorm2d(8); s.relu = nn.ReLU(inplace=True)
        s.maxpool = nn.MaxPool2d(3, 2, 1)
        s.layer1 = nn.Sequential(Basic(8, 8, 1)); s.layer2 = nn.Sequential(Basic(8, 16, 2), Basic(16, 16, 1))
        s.avgpool = nn.AdaptiveAvgPool2d((1, 1)); s.fc = nn.Linear(16, 5)
    def forward(s, x):
        x = s.maxpool(s.relu(s.bn1(s.conv1(x)))); x = s.layer2(s.layer1(x))
        return s.fc(torch.flatten(s.avgpool(x), 1))

class SE(nn.Module):
    def __init__(s, c):
        super().__init__(); s.avgpool = nn.AdaptiveAvgPool2d(1); s.fc1 = nn.Conv2d(c, c // 4, 1); s.fc2 = nn.Conv2d(c // 4, c, 1)
        s.activation = nn.SiLU(); s.scale_activation = nn.Sigmoid()
    def forward(s, x): return x * s.scale_activation(s.fc2(s.activation(s.fc1(s.avgpool(x)))))

class MBish(nn.Module):
    def __init__(s):
        super().__init__()
        s.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True)),
            nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.SiLU()),
            SE(16),
            nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1, groups=4, bias=False), nn.BatchNorm2d(24), nn.Hardswish()),
        )
        s.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(24, 5))
    def forward(s, x):
        x = s.features(x); x = F.adaptive_avg_pool2d(x, 1); x = torch.flatten(x, 1)
        return torch.softmax(s.classifier(x), dim=1)

class C2f(nn.Module):
    def __init__(s, c):
        super().__init__(); s.cv1 = nn.Conv2d(c, c, 1); s.cv2 = nn.Conv2d(3 * c // 2, c, 1); s.m = nn.Conv2d(c // 2, c // 2, 3, 1, 1)
    def forward(s, x):
        y = list(s.cv1(x).chunk(2, 1))
        y.append(F.silu(s.m(y[-1])) + y[-1])
        return s.cv2(torch.cat(y, 1))

class Yoloish(nn.Module):
    def __init__(s):
        super().__init__()
        s.model = nn.ModuleList([nn.Conv2d(3, 16, 3, 2, 1), C2f(16), nn.MaxPool2d(5, 1, 2), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(32, 12, 1)])
    def forward(s, x):
        a = F.silu(s.model[0](x)); b = s.model[1](a); c = s.model[2](F.max_pool2d(b, 2))
        u = s.model[3](c); out = s.model[4](torch.cat([u, b], 1))
        return out.view(out.size(0), 12, -1)

class Odd(nn.Module):
    """What the families above do not use: reflect pad, avg pool ceil_mode, bilinear upsample, LeakyReLU, PReLU."""
    def __init__(s):
        super().__init__(); s.conv = nn.Conv2d(3, 8, 3); s.prelu = nn.PReLU(8); s.fc = nn.Linear(288, 4)
    def forward(s, x):
        x = F.pad(x, (1, 1, 1, 1), mode="reflect"); x = F.leaky_relu(s.conv(x), 0.1); x = s.prelu(x)
        x = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True); x = F.interpolate(x, scale_factor=0.75, mode="bilinear", align_corners=False)
        return s.fc(x.reshape(x.shape[0], -1))

FOLDER = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent / "tests" / "data" / "torch_exports")
FOLDER.mkdir(parents=True, exist_ok=True)
for name, model, size in [("resnet", ResNetish(), 32), ("mbconv", MBish(), 32), ("yolo", Yoloish(), 32), ("odd", Odd(), 16)]:
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2); module.running_var.uniform_(0.5, 1.5); module.weight.data.uniform_(0.5, 1.5)
    torch.onnx.export(model, torch.randn(1, 3, size, size), str(FOLDER / f"{name}.onnx"), opset_version=17, dynamo=False)
    print("exported", name)
