"""The ResNet skeleton shared by the CIFAR and ImageNet builders (He et al. 2015, 2016).

stem (ConvNorm [+ max-pool]) -> stages -> [final norm-ReLU for pre-activation] -> global average pool -> Linear.
Each stage is a head block (which may change the shape: stride 2 and/or more channels) followed by a
``ResidualStack`` of its remaining identical blocks, run under ``lax.scan``: the traced program has a constant
number of blocks per stage, so compile time does not grow with depth. ``scan=True`` is the default on every
platform: on CPU the scanned stages are also the faster form (``python -m benchmarks.scan_vs_unrolled``).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rnlib.nn._blocks import ConvNorm, ResidualBlock, ResidualStack
from rnlib.ops.residual import BlockOptions, lecun_normal


class ResNet(nnx.Module):
    """A residual (or, with ``shortcut="none"``, plain) convolutional network: NHWC float -> logits.

    Args:
      name: model name used in error messages (e.g. ``"cifar_resnet20"``).
      stage_sizes: blocks per stage; stage i > 0 starts with a stride-2 block.
      widths: per-stage width (output channels of a basic block; inner width of a bottleneck).
      stem_features, stem_kernel, stem_stride, stem_pool: the stem convolution and an optional 3x3/2 max-pool.
      stem_norm: whether the stem conv is followed by norm-ReLU (False for the CIFAR pre-activation nets, whose
        first block pre-activates its input).
      scan, remat, remat_policy: how each stage's stack of identical blocks runs (see ``ResidualStack``).
      dtype: compute dtype of convolutions and the classifier (parameters stay float32).
      block_options: ``rnlib.ops.residual.BlockOptions`` fields shared by every block (kind, order, shortcut, norm,
        expansion, zero_init_last, branch_scale, momentum, epsilon); norm, momentum and epsilon also apply to the
        stem's and the final norm.
    """

    def __init__(self, *, name: str, stage_sizes: Sequence[int], widths: Sequence[int], num_classes: int,
                 in_features: int = 3, stem_features: int = 64, stem_kernel: int = 3, stem_stride: int = 1,
                 stem_pool: bool = False, stem_norm: bool = True, scan: bool = True, remat: bool = False,
                 remat_policy: Callable[..., bool] | None = None, dtype: Any = None, rngs: nnx.Rngs,
                 **block_options: Any):
        if len(stage_sizes) != len(widths) or not stage_sizes or min(stage_sizes) < 1:
            raise ValueError(f"{name}: need one width per stage and >= 1 block per stage, got stage_sizes="
                             f"{list(stage_sizes)}, widths={list(widths)}")
        if num_classes < 1 or in_features < 1:
            raise ValueError(f"{name}: num_classes and in_features must be >= 1, got {num_classes}, {in_features}")
        self.name = name
        self.in_features = in_features
        self.num_classes = num_classes
        self.dtype = dtype
        self.stem_pool = stem_pool
        self.min_spatial = stem_stride * (2 if stem_pool else 1) * 2 ** (len(stage_sizes) - 1)
        try:
            opts = BlockOptions(**block_options)
        except TypeError as e:  # an unknown keyword: name the model
            raise TypeError(f"{name}: {e}") from None
        common = dict(dtype=dtype, **opts.as_dict())
        self.stem = ConvNorm(in_features, stem_features, kernel_size=stem_kernel, stride=stem_stride,
                             norm=opts.norm if stem_norm else "none", relu=stem_norm, momentum=opts.momentum,
                             epsilon=opts.epsilon, dtype=dtype, rngs=rngs)
        heads, stacks = [], []
        cin = stem_features
        for i, (n, w) in enumerate(zip(stage_sizes, widths)):
            head = ResidualBlock(cin, w, stride=1 if i == 0 else 2, rngs=rngs, **common)
            heads.append(head)
            stacks.append(ResidualStack(n - 1, w, scan=scan, remat=remat, remat_policy=remat_policy, rngs=rngs,
                                        **common) if n > 1 else None)
            cin = head.out_features
        self.heads = nnx.data(heads)
        self.stacks = nnx.data(stacks)
        self.final_norm = (ConvNorm(cin, cin, kernel_size=0, norm=opts.norm, relu=True, momentum=opts.momentum,
                                    epsilon=opts.epsilon, dtype=dtype, rngs=rngs) if opts.order == "pre" else None)
        self.head = nnx.Linear(cin, num_classes, dtype=dtype, kernel_init=lecun_normal, rngs=rngs)

    def check_input(self, x: jax.Array) -> None:
        """Raise a ValueError/TypeError naming the model unless x is float NHWC, right channels, big enough."""
        if x.ndim != 4:
            raise ValueError(f"{self.name}: expected an NHWC batch of rank 4 (N, H, W, {self.in_features}), "
                             f"got shape {x.shape}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.name}: expected {self.in_features} input channels (last axis, NHWC), "
                             f"got shape {x.shape}")
        if min(x.shape[1:3]) < self.min_spatial:
            raise ValueError(f"{self.name}: spatial size {x.shape[1:3]} is smaller than the network's total "
                             f"downsampling {self.min_spatial}; need H, W >= {self.min_spatial}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{self.name}: expected a floating-point input, got dtype {x.dtype}")

    def features(self, x: jax.Array) -> jax.Array:
        """Pooled features before the classifier: (N, H, W, C_in) -> (N, C_out)."""
        self.check_input(x)
        h = self.stem(x, in_loop=False)  # the stem and each stage's head block run outside any loop body
        if self.stem_pool:
            h = nnx.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for head, stack in zip(self.heads, self.stacks):
            h = head(h, in_loop=False)
            if stack is not None:
                h = stack(h)
        if self.final_norm is not None:
            h = self.final_norm(h)
        return jnp.mean(h, axis=(1, 2), dtype=jnp.float32).astype(h.dtype)  # accumulate in float32

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (N, num_classes) for an NHWC float batch (N, H, W, in_features)."""
        return self.head(self.features(x))
