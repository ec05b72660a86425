"""CIFAR ResNets and plain nets (He et al. 2015 section 4.2; pre-activation: He et al. 2016).

Basic blocks: depth = 6n + 2 (3 stages of n two-conv blocks, widths 16/32/64, a 3x3 stem, a linear layer):
20, 32, 44, 56, 110, 1202. Bottleneck blocks: depth = 9n + 2 (widths 16/32/64, outputs 64/128/256): 164, 1001.
"""
from __future__ import annotations

from typing import Any

from flax import nnx

from rnlib.models._resnet import ResNet


def cifar_layout(depth: int, bottleneck: bool | None = None) -> tuple[bool, int]:
    """(bottleneck, blocks per stage) for a CIFAR depth.

    ``bottleneck=None`` follows the papers: bottleneck blocks for depth >= 164 with depth = 9n + 2 (ResNet-164,
    ResNet-1001), basic blocks otherwise (6n + 2).
    """
    if bottleneck is None:
        bottleneck = depth >= 164 and (depth - 2) % 9 == 0
    per_block = 9 if bottleneck else 6
    if depth < per_block + 2 or (depth - 2) % per_block:
        form = "9n+2 (bottleneck)" if bottleneck else "6n+2 (basic)"
        raise ValueError(f"cifar_resnet: depth={depth} is not of the form {form} with n >= 1")
    return bottleneck, (depth - 2) // per_block


def cifar_model_name(depth: int, *, plain: bool = False, preact: bool = False) -> str:
    return f"cifar_{'preact_' if preact else ''}{'plain' if plain else 'resnet'}{depth}"


def cifar_resnet(depth: int, *, plain: bool = False, preact: bool = False, norm: str = "batch",
                 shortcut: str | None = None, num_classes: int = 10, bottleneck: bool | None = None,
                 in_features: int = 3, rngs: nnx.Rngs, **kw: Any) -> ResNet:
    """A CIFAR ResNet (or its plain twin with ``plain=True``: same layers, no shortcuts) for 32x32 NHWC input.

    Args:
      depth: 6n + 2 for basic blocks, 9n + 2 for bottlenecks (see ``cifar_layout``).
      plain: drop every shortcut (the paper's plain baseline; same parameter count with option A).
      preact: pre-activation blocks (He et al. 2016): conv stem, norm-ReLU-conv blocks, a final norm-ReLU.
      norm: "batch" | "layer" | "rms" | "stats" | "none".
      shortcut: "A" | "B" | "C"; default "A" (the paper's CIFAR choice) for basic blocks and "B" for bottlenecks
        (whose first block widens 16 -> 64 channels, as in the pre-activation reference code).
      kw: forwarded to ``ResNet`` (zero_init_last, branch_scale, scan, remat, remat_policy, dtype, ...).
    Parameter counts (option A, BatchNorm, 10 classes): ResNet-20 269,722; -32 464,154; -44 658,586;
    -56 853,018; -110 1,727,962; -1202 19,421,274 (Table 6: 0.27M ... 19.4M); plain twins the same.
    """
    bottleneck, n = cifar_layout(depth, bottleneck)
    if shortcut is None:
        shortcut = "B" if bottleneck else "A"
    if plain:
        shortcut = "none"
    return ResNet(name=cifar_model_name(depth, plain=plain, preact=preact), stage_sizes=(n, n, n),
                  widths=(16, 32, 64), num_classes=num_classes, in_features=in_features,
                  kind="bottleneck" if bottleneck else "basic", order="pre" if preact else "post",
                  shortcut=shortcut, norm=norm, stem_features=16, stem_kernel=3, stem_stride=1, stem_pool=False,
                  stem_norm=not preact, rngs=rngs, **kw)
