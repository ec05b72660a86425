"""Reference code (optional peer): the same CIFAR ResNet in PyTorch, trained eagerly as a torch user would.

Mirrors ``resnet_linen``: 3x3/16 stem, three stages of n basic blocks (16/32/64 filters), projection shortcut
(1x1 conv + BatchNorm) where the shape changes, BatchNorm momentum 0.1 in torch's convention (= flax 0.9), eps 1e-5,
SGD with Nesterov momentum and weight decay. Input NCHW (B, 3, 32, 32). Imported only when torch is installed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
        nn.init.zeros_(self.bn2.weight)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.proj is None else self.proj(x)))


class ResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"ResNet: depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks, cin = [], 16
        for i, w in enumerate((16, 32, 64)):
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def make_step(depth: int, batch: int, device: str = "cpu", seed: int = 0):
    """A zero-argument callable running one eager SGD train step on a fixed synthetic batch; returns the loss."""
    torch.manual_seed(seed)
    model = ResNet(depth).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()
    return step
