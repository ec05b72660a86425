"""Flax linen norm modules: thin wrappers over :mod:`rnlib.ops` with ``flax.linen``'s names and defaults.

Parameters ``scale``/``bias`` have the shape of the input's ``feature_axes`` (as in ``flax.linen.LayerNorm``),
so a linen LayerNorm/RMSNorm swaps for rnlib's with the same parameter tree. ``use_fast_variance`` is accepted
for drop-in compatibility and has no effect: rnlib always uses the exact two-pass variance.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from rnlib import ops
from rnlib.ops.axes import Axes, make_layout

Initializer = Any


class _Norm(nn.Module):
    """Shared fields and parameter creation (not public)."""

    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones
    reduction_axes: Axes = -1
    feature_axes: Axes = -1
    use_fast_variance: bool = True
    impl: str = "auto"

    def _params(self, x: jax.Array, use_bias: bool) -> tuple[Optional[jax.Array], Optional[jax.Array]]:
        shape = make_layout(jnp.shape(x), self.reduction_axes, self.feature_axes).param_shape
        scale = self.param("scale", self.scale_init, shape, self.param_dtype) if self.use_scale else None
        bias = self.param("bias", self.bias_init, shape, self.param_dtype) if use_bias else None
        return scale, bias

    def _kw(self) -> dict:
        return dict(reduction_axes=self.reduction_axes, feature_axes=self.feature_axes, epsilon=self.epsilon,
                    dtype=self.dtype, impl=self.impl)


class LayerNorm(_Norm):
    """Layer normalization as ``flax.linen.LayerNorm``; see :func:`rnlib.ops.layer_norm`."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.layer_norm(x, *self._params(x, self.use_bias), **self._kw())


class RMSNorm(_Norm):
    """RMS normalization as ``flax.linen.RMSNorm`` (parameter ``scale`` only)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.rms_norm(x, self._params(x, False)[0], **self._kw())


class AddNorm(_Norm):
    """Fused residual add + norm: ``__call__(x, residual) -> (y, new_residual)``; see :func:`rnlib.ops.add_norm`."""

    norm: str = "layer"
    residual_dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array) -> tuple[jax.Array, jax.Array]:
        scale, bias = self._params(x, self.use_bias and self.norm == "layer")
        return ops.add_norm(x, residual, scale, bias, norm=self.norm, residual_dtype=self.residual_dtype,
                            **self._kw())


class StatsLayerNorm(_Norm):
    """LN that re-injects per-example mean and log-std (param ``stats_scale``, zeros at init)."""

    stats_scale_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale, bias = self._params(x, self.use_bias)
        shape = (2,) + make_layout(jnp.shape(x), self.reduction_axes, self.feature_axes).param_shape
        stats_scale = self.param("stats_scale", self.stats_scale_init, shape, self.param_dtype)
        return ops.layer_norm_with_stats(x, scale, bias, stats_scale, **self._kw())
