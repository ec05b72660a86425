"""Residual MLP classifier: flatten -> Linear(width) -> depth pre-norm MLP blocks (scanned) -> norm -> Linear.

x_{l+1} = x_l + MLP_l(norm(x_l)) in the fused residual-stream form of ``rnlib.ops.add_norm``.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rnlib import ops
from rnlib.nn._blocks import ResidualMLPStack
from rnlib.ops.residual import lecun_normal


class ResidualMLP(nnx.Module):
    """(N, ...) float input with prod(...) == in_features -> logits (N, num_classes)."""

    def __init__(self, in_features: int, num_classes: int, *, depth: int = 4, width: int = 256,
                 hidden: int | None = None, norm: str = "layer", epsilon: float = 1e-6,
                 activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu, zero_init_last: bool = False,
                 scan: bool = True, remat: bool = False, remat_policy: Callable[..., bool] | None = None,
                 name: str = "residual_mlp", rngs: nnx.Rngs):
        if in_features < 1 or num_classes < 1 or depth < 1 or width < 1:
            raise ValueError(f"{name}: in_features, num_classes, depth, width must be >= 1, got "
                             f"{in_features}, {num_classes}, {depth}, {width}")
        self.name, self.in_features, self.norm, self.epsilon = name, in_features, norm, epsilon
        self.embed = nnx.Linear(in_features, width, kernel_init=lecun_normal, rngs=rngs)
        self.blocks = ResidualMLPStack(depth, width, hidden, norm=norm, epsilon=epsilon, activation=activation,
                                       zero_init_last=zero_init_last, scan=scan, remat=remat,
                                       remat_policy=remat_policy, rngs=rngs)
        self.final_scale = nnx.Param(jnp.ones((width,), jnp.float32))
        self.final_bias = nnx.Param(jnp.zeros((width,), jnp.float32)) if norm == "layer" else None
        self.head = nnx.Linear(width, num_classes, kernel_init=lecun_normal, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim < 2 or x[0].size != self.in_features:
            raise ValueError(f"{self.name}: expected (N, ...) input with {self.in_features} features per example, "
                             f"got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{self.name}: expected a floating-point input, got dtype {x.dtype}")
        h = self.embed(x.reshape(x.shape[0], -1))
        h, r = self.blocks(h, jnp.zeros_like(h))
        bias = None if self.final_bias is None else self.final_bias[...]
        y, _ = ops.add_norm(h, r, self.final_scale[...], bias, norm=self.norm, epsilon=self.epsilon)
        return self.head(y)


def residual_mlp(depth: int, *, in_features: int, num_classes: int = 10, width: int = 256, rngs: nnx.Rngs,
                 **kw: Any) -> ResidualMLP:
    """``ResidualMLP`` with ``depth`` blocks (registry name ``resmlp{depth}``); ``in_features`` = H*W*C."""
    return ResidualMLP(in_features, num_classes, depth=depth, width=width, name=f"resmlp{depth}", rngs=rngs,
                       **kw)
