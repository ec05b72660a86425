"""Build a model from a CLI-style name: ``build("resnet20", 10, nnx.Rngs(0))``.

Names (N is the depth; case-insensitive, "-" and "_" interchangeable):
  cifar_resnetN, cifar_plainN, cifar_preact_resnetN, cifar_preact_plainN            -> ``cifar_resnet``
  imagenet_resnetN, imagenet_plainN, imagenet_preact_resnetN, ...                   -> ``imagenet_resnet``
  resnetN, plainN, preact_resnetN, preact_plainN: ImageNet when N is 18/34/50/101/152, else CIFAR
  resmlpN (N residual MLP blocks; needs ``in_features`` = H*W*C)                     -> ``residual_mlp``
Every model maps an NHWC float batch to logits, ``model(x) -> (N, num_classes)``; ``model.train()`` /
``model.eval()`` switch BatchNorm between batch and running statistics.
"""
from __future__ import annotations

import re
from typing import Any

from flax import nnx

from rnlib.models._cifar import cifar_resnet
from rnlib.models._imagenet import IMAGENET_LAYOUTS, imagenet_resnet

_PATTERN = re.compile(r"^(?:(cifar|imagenet)_)?(preact_)?(resnet|plain|resmlp)(\d+)$")

EXAMPLES = (  # names build() accepts (any CIFAR depth 6n+2 works too)
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202", "plain20", "plain56", "plain110",
    "preact_resnet110", "preact_resnet164", "preact_resnet1001", "resnet18", "resnet34", "resnet50", "resnet101",
    "resnet152", "plain18", "plain34", "cifar_resnet50", "resmlp8")


def parse_name(name: str) -> dict[str, Any]:
    """Split a model name into {family, preact, plain, depth}; ValueError naming the accepted forms."""
    m = _PATTERN.match(name.strip().lower().replace("-", "_"))
    if m is None:
        raise ValueError(f"build: unknown model name {name!r}; expected e.g. {', '.join(EXAMPLES[:8])}, "
                         "or [cifar_|imagenet_][preact_](resnet|plain)N, resmlpN")
    family, preact, arch, depth = m.group(1), bool(m.group(2)), m.group(3), int(m.group(4))
    if arch == "resmlp":
        if family or preact:
            raise ValueError(f"build: {name!r}: resmlp takes no cifar_/imagenet_/preact_ prefix")
        family = "mlp"
    elif family is None:
        family = "imagenet" if depth in IMAGENET_LAYOUTS else "cifar"
    return {"family": family, "preact": preact, "plain": arch == "plain", "depth": depth}


def build(name: str, num_classes: int, rngs: nnx.Rngs, **kw: Any) -> nnx.Module:
    """Instantiate the model ``name`` with ``num_classes`` outputs; ``kw`` goes to the builder (e.g. norm="layer",
    shortcut="B", zero_init_last=True, scan=False, remat=True, dtype=jnp.bfloat16, in_features=1)."""
    spec = parse_name(name)
    if spec["family"] == "mlp":
        from rnlib.models._mlp import residual_mlp  # the MLP builder is optional; keep the CNN path importable
        return residual_mlp(spec["depth"], num_classes=num_classes, rngs=rngs, **kw)
    builder = cifar_resnet if spec["family"] == "cifar" else imagenet_resnet
    return builder(spec["depth"], plain=spec["plain"], preact=spec["preact"], num_classes=num_classes, rngs=rngs,
                   **kw)
