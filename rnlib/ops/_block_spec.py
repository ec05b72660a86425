"""The static choices of a residual block, stated once: ``BlockOptions`` (what every block of a net shares) and
``BlockSpec`` (those plus one block's geometry). NNX modules and models take the options as keyword arguments,
linen modules as an ``options`` field; all of them validate through these classes.

* kind "basic" (3x3, 3x3) or "bottleneck" (1x1, 3x3, 1x1 with ``expansion``; v1.5: the stride sits on the 3x3);
* order "post" (v1):  y = relu(s * F(x) + P(x)),  F = conv-norm-relu ... conv-norm;
  order "pre"  (v2):  y = s * F(x) + P(x),        F = norm-relu-conv ... norm-relu-conv;
* shortcut P: "A" identity, on a shape change stride subsampling plus zero channels appended (CIFAR option A);
  "B" 1x1 projection only on a shape change, else identity; "C" projection always; "none": no P (a plain net);
  in "pre" order a projection reads the pre-activated input relu(norm1(x)) (as in the v2 reference code),
  identity/option A read x;
* norm "batch" | "layer" | "rms" | "stats" (rnlib.ops norms over the channel axis, per position) | "none";
* ``zero_init_last``: F(x) = 0 at init (the last norm's scale when a norm follows the last conv, else the last
  conv's kernel); ``branch_scale``: a learnable scalar s initialised to 0 (ReZero/SkipInit), else s = 1;
* ``momentum``: batch norm's running = momentum * running + (1 - momentum) * batch (torch's 0.1); ``epsilon``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from rnlib.ops._channel_norms import NORMS

KINDS = ("basic", "bottleneck")
ORDERS = ("post", "pre")
SHORTCUTS = ("A", "B", "C", "none")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockOptions:
    """The options every block of a residual net shares (see the module docstring); frozen and hashable."""

    kind: str = "basic"
    order: str = "post"
    shortcut: str = "B"
    norm: str = "batch"
    expansion: int = 4
    zero_init_last: bool = False
    branch_scale: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field, value, allowed in (("kind", self.kind, KINDS), ("order", self.order, ORDERS),
                                      ("shortcut", self.shortcut, SHORTCUTS), ("norm", self.norm, NORMS)):
            if value not in allowed:
                raise ValueError(f"{name}: {field}={value!r}, expected one of {allowed}")
        if self.expansion < 1:
            raise ValueError(f"{name}: expansion must be >= 1, got {self.expansion}")
        if not (0.0 <= self.momentum <= 1.0) or not self.epsilon > 0:
            raise ValueError(f"{name}: momentum in [0, 1] and epsilon > 0 required, got "
                             f"momentum={self.momentum}, epsilon={self.epsilon}")

    def output_width(self, features: int) -> int:
        """Output channels of a block of width ``features``: ``expansion * features`` for a bottleneck."""
        return features * (self.expansion if self.kind == "bottleneck" else 1)

    def as_dict(self) -> dict[str, Any]:
        """The options as keyword arguments (what ``BlockOptions(**d)`` and the NNX modules accept)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(BlockOptions)}


@dataclasses.dataclass(frozen=True)
class BlockSpec(BlockOptions):
    """One residual block: its geometry (``in_features``, ``features``, ``stride``) and its ``BlockOptions``.

    ``features`` is the output width of a basic block and the inner width of a bottleneck (whose output is
    ``expansion * features``). ``BlockSpec(in_features, features, stride=1, **options)``.
    """

    in_features: int
    features: int
    stride: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.in_features < 1 or self.features < 1 or self.stride < 1:
            raise ValueError(f"BlockSpec: in_features, features, stride must be >= 1, got {self}")
        if self.shortcut == "A" and self.out_features < self.in_features:
            raise ValueError(f"BlockSpec: shortcut 'A' pads channels and cannot shrink {self.in_features} -> "
                             f"{self.out_features}; use 'B' or 'C'")

    @classmethod
    def of(cls, in_features: int, features: int, stride: int = 1,
           options: BlockOptions = BlockOptions()) -> BlockSpec:
        """The spec of a block with this geometry and these options."""
        return cls(in_features, features, stride, **options.as_dict())

    @classmethod
    def stackable(cls, features: int, options: BlockOptions = BlockOptions()) -> BlockSpec:
        """The shape-preserving block (stride 1, in == out) of width ``features`` that a stack repeats."""
        return cls.of(options.output_width(features), features, 1, options)

    @property
    def options(self) -> BlockOptions:
        return BlockOptions(**self.as_dict())

    @property
    def out_features(self) -> int:
        return self.output_width(self.features)

    @property
    def changes_shape(self) -> bool:
        return self.stride != 1 or self.in_features != self.out_features

    @property
    def projects(self) -> bool:
        return self.shortcut == "C" or (self.shortcut == "B" and self.changes_shape)

    def convs(self) -> list[tuple[int, int, int, int]]:
        """(kernel size, in channels, out channels, stride) of the branch's convolutions, in order."""
        f = self.features
        if self.kind == "basic":
            return [(3, self.in_features, f, self.stride), (3, f, f, 1)]
        return [(1, self.in_features, f, 1), (3, f, f, self.stride), (1, f, self.out_features, 1)]
