"""Reference code (optional peer): torchvision's ResNet-18/34/50/101/152, module for module, in plain PyTorch.

Written out because torchvision does not import beside every torch build; the module names, hence the state-dict
keys, are torchvision's exactly (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``layer2.0.downsample.0/1``, ``fc``),
as are the initialisation (Kaiming-normal fan-out convolutions, unit/zero BatchNorm) and the v1.5 bottleneck (the
stride sits on the 3x3 convolution). Input NCHW (B, 3, H, W); ``channels_last`` memory format works as in
torchvision. Used by the tests of ``rnlib.models.from_torchvision`` and as the torch peer of the ResNet-50 train
benchmark (``make_step``). Imported only when torch is installed.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

LAYOUTS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
           101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """v1.5: 1x1, 3x3 (stride), 1x1 (x4)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.ResNet for ``depth`` in 18/34/50/101/152 (no groups / width multiplier / dilation)."""

    def __init__(self, depth: int, num_classes: int = 1000):
        super().__init__()
        if depth not in LAYOUTS:
            raise ValueError(f"ResNet: depth={depth} not in {sorted(LAYOUTS)}")
        kind, layers = LAYOUTS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(depth: int, num_classes: int = 1000) -> ResNet:
    return ResNet(depth, num_classes)


def make_step(depth: int, batch: int, image: int, *, bf16: bool = False, compile: bool = True, device: str = "cpu",
              seed: int = 0) -> tuple[Callable[[], torch.Tensor], str]:
    """One SGD train step (momentum 0.9, weight decay 1e-4, BatchNorm statistics updated) on a fixed synthetic
    channels-last batch (B, 3, image, image); ``bf16`` runs the forward under ``torch.autocast`` (bfloat16 compute,
    float32 parameters and optimizer state, loss in float32). Returns (step, mode): ``mode`` is "compiled" when
    ``torch.compile`` built and ran the step, else "eager" plus why compile was not used.
    """
    torch.manual_seed(seed)
    model = ResNet(depth).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, image, image, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def loss_of(m: nn.Module) -> torch.Tensor:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            logits = m(x)
        return F.cross_entropy(logits.float(), y)

    def run(m: nn.Module) -> Callable[[], torch.Tensor]:
        def step() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = loss_of(m)
            loss.backward()
            opt.step()
            return loss.detach()
        return step

    mode = "eager (torch.compile not asked for)"
    if compile:
        try:
            compiled = torch.compile(model)
            step = run(compiled)
            step()  # compile now (forward and backward), so a failure falls back here rather than mid-timing
            return step, "compiled"
        except Exception as e:  # noqa: BLE001 -- no C++ toolchain, unsupported backend, ...: eager still runs
            mode = f"eager (torch.compile failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:120]})"
    return run(model), mode
