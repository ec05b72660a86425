"""Reference code: a transformer-style pre-norm residual MLP stack built from flax.linen.LayerNorm.

Each block is h <- h + MLP(LayerNorm(h)) with MLP = Dense(4d) -> GELU -> Dense(d), on tokens (B, T, d); a final
LayerNorm and a linear head. With ``add_norm`` given (e.g. ``rnlib.linen.AddNorm``) the same network is written on
the fused residual step instead: ``y, h = add_norm(delta, h)`` adds the previous block's output into the stream and
normalises it in one op, which is what the train suite compares at model level. The parameter trees match apart
from the norms' module names.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

EPS = 1e-6


class PreNormStack(nn.Module):
    depth: int
    features: int
    num_classes: int = 10
    add_norm: Any = None  # None: flax LayerNorm plus an explicit add; else an AddNorm class (fused)
    dtype: Any = jnp.float32

    def _mlp(self, y: jax.Array, i: int) -> jax.Array:
        y = nn.Dense(4 * self.features, dtype=self.dtype, name=f"mlp{i}_in")(y)
        return nn.Dense(self.features, dtype=self.dtype, name=f"mlp{i}_out")(nn.gelu(y))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, T, features) -> logits (B, num_classes) from the mean token."""
        h = x.astype(self.dtype)
        if self.add_norm is None:
            for i in range(self.depth):
                h = h + self._mlp(nn.LayerNorm(epsilon=EPS, dtype=self.dtype, name=f"norm{i}")(h), i)
            y = nn.LayerNorm(epsilon=EPS, dtype=self.dtype, name="norm_final")(h)
        else:
            delta = jnp.zeros_like(h)
            for i in range(self.depth):
                y, h = self.add_norm(epsilon=EPS, dtype=self.dtype, name=f"norm{i}")(delta, h)
                delta = self._mlp(y, i)
            y, _ = self.add_norm(epsilon=EPS, dtype=self.dtype, name="norm_final")(delta, h)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(jnp.mean(y, axis=1)).astype(jnp.float32)
