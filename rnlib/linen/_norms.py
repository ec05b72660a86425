"""Flax linen norm modules: drop-ins for ``flax.linen.LayerNorm``/``RMSNorm`` with Flax's fields, in Flax's order.

Parameters ``scale``/``bias`` have the shape of the input's ``feature_axes`` (as in ``flax.linen.LayerNorm``),
so a linen LayerNorm/RMSNorm swaps for rnlib's with the same parameter tree. ``__call__(x, *, mask=None)``.
Differences, all deliberate:

* statistics are always float32 (float64 for float64 input) with the exact, shifted two-pass variance;
  ``use_fast_variance`` and ``force_float32_reductions=False`` are accepted and have no effect (rnlib never
  reduces in half precision and never uses ``E[x^2] - E[x]^2``).

Output dtype (Flax's rule): ``dtype`` if given, else the promotion of the input and parameter dtypes (bfloat16
input with float32 parameters gives float32; integer input gives float32). ``axis_name``/``axis_index_groups``
take the statistics across a named ``vmap``/``shard_map``/``pmap`` axis. Calls without ``mask``/``axis_name``
run on the fused kernels (``impl``, see :func:`rnlib.ops.layer_norm`); the rest run on XLA, same numerics.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

import rnlib._compat  # noqa: F401  (fails early on an unsupported jax/flax pair)
from rnlib import ops
from rnlib.ops._norm_general import (Axes, feature_shape, fused_or_general, fused_or_general_with_stats,
                                     result_dtype)

Initializer = Any


class _NormMethods:
    """Parameter creation and the call shared by the linen norms (fields are declared on each class, in
    Flax's order, so positional construction means what it means in Flax)."""

    def _params(self, x: jax.Array, use_scale: bool, use_bias: bool):
        shape = feature_shape(jnp.shape(x), self.feature_axes)
        scale = self.param("scale", self.scale_init, shape, self.param_dtype) if use_scale else None
        bias = self.param("bias", self.bias_init, shape, self.param_dtype) if use_bias else None
        return scale, bias

    def _norm(self, x: jax.Array, scale, bias, mask: Optional[jax.Array], rms: bool) -> jax.Array:
        return fused_or_general(x, scale, bias, rms=rms, reduction_axes=self.reduction_axes,
                                feature_axes=self.feature_axes, epsilon=self.epsilon,
                                dtype=result_dtype(x, scale, bias, dtype=self.dtype), mask=mask,
                                axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
                                impl=self.impl)


class LayerNorm(_NormMethods, nn.Module):
    """Layer normalization (Ba et al. 2016), a drop-in for ``flax.linen.LayerNorm``.

    ``y = (x - mean) / sqrt(var + epsilon) * scale + bias`` over ``reduction_axes`` (only where ``mask`` is
    True; across ``axis_name`` too when given). Fields as Flax's (same order and defaults), then ``impl``.
    ``use_fast_variance``/``force_float32_reductions`` are accepted and ignored: rnlib is always exact, in
    float32 or wider.
    """

    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones
    reduction_axes: Axes = -1
    feature_axes: Axes = -1
    axis_name: Optional[str] = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: Optional[jax.Array] = None) -> jax.Array:
        return self._norm(x, *self._params(x, self.use_scale, self.use_bias), mask, rms=False)


class RMSNorm(_NormMethods, nn.Module):
    """RMS normalization, a drop-in for ``flax.linen.RMSNorm``: ``y = x / sqrt(mean(x^2) + epsilon) * scale``.

    Parameter ``scale`` only; fields as Flax's (same order and defaults), then ``impl``.
    """

    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_scale: bool = True
    scale_init: Initializer = nn.initializers.ones
    reduction_axes: Axes = -1
    feature_axes: Axes = -1
    axis_name: Optional[str] = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: Optional[jax.Array] = None) -> jax.Array:
        return self._norm(x, self._params(x, self.use_scale, False)[0], None, mask, rms=True)


class AddNorm(LayerNorm):
    """Fused residual add + norm: ``__call__(x, residual, *, mask=None) -> (y, new_residual)``.

    ``new_residual = x + residual`` in ``residual_dtype`` (default the promotion of the two),
    ``y = norm(new_residual)`` with ``norm`` "layer" or "rms" (no bias for "rms"); ``y`` equals
    ``LayerNorm(...)(x + residual)`` (same dtype rule). See :func:`rnlib.ops.add_norm`.
    """

    norm: str = "layer"
    residual_dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array, *,
                 mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
        if self.norm not in ("layer", "rms"):
            raise ValueError(f"norm must be 'layer' or 'rms', got {self.norm!r}")
        x, residual = jnp.asarray(x), jnp.asarray(residual)
        rms = self.norm == "rms"
        scale, bias = self._params(x, self.use_scale, self.use_bias and not rms)
        h_dtype = jnp.dtype(jnp.promote_types(x.dtype, residual.dtype) if self.residual_dtype is None
                            else self.residual_dtype)
        if (mask is None and self.axis_name is None
                and all(jnp.issubdtype(d, jnp.floating) for d in (x.dtype, residual.dtype, h_dtype))):
            out = result_dtype(jnp.zeros((), h_dtype), scale, bias, dtype=self.dtype)
            return ops.add_norm(x, residual, scale, bias, norm=self.norm, residual_dtype=self.residual_dtype,
                                reduction_axes=self.reduction_axes, feature_axes=self.feature_axes,
                                epsilon=self.epsilon, dtype=out, impl=self.impl)
        h = x.astype(h_dtype) + residual.astype(h_dtype)
        return self._norm(h, scale, bias, mask, rms=rms), h


class StatsLayerNorm(LayerNorm):
    """LN that re-injects per-example mean and log-std (param ``stats_scale`` of shape ``(2, *feature_shape)``,
    zeros at init): ``y = LN(x) + stats_scale[0] * mean + stats_scale[1] * log(sqrt(var + epsilon))``.
    ``__call__(x, *, mask=None)``. See :func:`rnlib.ops.layer_norm_with_stats`."""

    stats_scale_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: Optional[jax.Array] = None) -> jax.Array:
        x = jnp.asarray(x)
        scale, bias = self._params(x, self.use_scale, self.use_bias)
        shape = (2,) + feature_shape(x.shape, self.feature_axes)
        stats_scale = self.param("stats_scale", self.stats_scale_init, shape, self.param_dtype)
        out = result_dtype(x, scale, bias, stats_scale, dtype=self.dtype)
        return fused_or_general_with_stats(x, scale, bias, stats_scale, reduction_axes=self.reduction_axes,
                                           feature_axes=self.feature_axes, epsilon=self.epsilon, dtype=out,
                                           mask=mask, axis_name=self.axis_name,
                                           axis_index_groups=self.axis_index_groups, impl=self.impl)
