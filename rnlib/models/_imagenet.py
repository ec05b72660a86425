"""ImageNet ResNets (He et al. 2015 Table 1) in torchvision's v1.5 form (the stride sits on the 3x3 conv).

7x7/2 stem (64) + norm-ReLU + 3x3/2 max-pool, four stages of widths 64/128/256/512 (bottleneck outputs x4),
global average pool, linear. Parameter counts equal torchvision's (BatchNorm, 1000 classes):
resnet18 11,689,512; resnet34 21,797,672; resnet50 25,557,032; resnet101 44,549,160; resnet152 60,192,808.
"""
from __future__ import annotations

from typing import Any

from flax import nnx

from rnlib.models._resnet import ResNet

IMAGENET_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def imagenet_model_name(depth: int, *, plain: bool = False, preact: bool = False) -> str:
    return f"imagenet_{'preact_' if preact else ''}{'plain' if plain else 'resnet'}{depth}"


def imagenet_resnet(depth: int, *, plain: bool = False, preact: bool = False, norm: str = "batch",
                    shortcut: str = "B", num_classes: int = 1000, in_features: int = 3, rngs: nnx.Rngs,
                    **kw: Any) -> ResNet:
    """An ImageNet ResNet-{18,34,50,101,152} (or its plain twin) for NHWC input of at least 32x32 (224 usual).

    ``shortcut`` "B" (torchvision: 1x1 projection + norm on a shape change) | "A" | "C"; ``plain`` drops them.
    ``preact`` gives the pre-activation variant (stem conv-norm-ReLU-pool kept, final norm-ReLU added; unlike
    the reference code, the first block still pre-activates its already normalised input, one extra norm).
    ``kw`` is forwarded to ``ResNet`` (zero_init_last, branch_scale, scan, remat, remat_policy, dtype, ...).
    """
    if depth not in IMAGENET_LAYOUTS:
        raise ValueError(f"imagenet_resnet: depth={depth} not in {sorted(IMAGENET_LAYOUTS)}")
    kind, sizes = IMAGENET_LAYOUTS[depth]
    return ResNet(name=imagenet_model_name(depth, plain=plain, preact=preact), stage_sizes=sizes,
                  widths=(64, 128, 256, 512), num_classes=num_classes, in_features=in_features, kind=kind,
                  order="pre" if preact else "post", shortcut="none" if plain else shortcut, norm=norm,
                  stem_features=64, stem_kernel=7, stem_stride=2, stem_pool=True, stem_norm=True, rngs=rngs, **kw)
