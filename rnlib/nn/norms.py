"""Flax NNX norm modules: thin wrappers that own parameters and call :mod:`rnlib.ops`.

Constructor arguments, defaults and parameter names match ``flax.nnx.LayerNorm``/``RMSNorm`` (``scale``,
``bias``; ``epsilon=1e-6``), so swapping a Flax norm for rnlib's keeps the parameter tree. ``impl`` picks the
implementation ("auto" | "xla" | "pallas"). rnlib always computes the exact two-pass variance; Flax's
``use_fast_variance`` is accepted for drop-in compatibility and has no effect.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import initializers

from rnlib import ops
from rnlib.ops.axes import Axes

Initializer = Any


def _feature_shape(num_features: Union[int, Sequence[int]]) -> tuple[int, ...]:
    return (int(num_features),) if isinstance(num_features, int) else tuple(int(n) for n in num_features)


def _param(rngs: nnx.Rngs, use: bool, init: Initializer, shape: tuple[int, ...], dtype: Any):
    return nnx.Param(init(rngs.params(), shape, dtype)) if use else None


def _value(p) -> Optional[jax.Array]:
    return None if p is None else p[...]


class _Norm(nnx.Module):
    """Shared constructor of the norm modules (not public)."""

    def __init__(self, num_features: Union[int, Sequence[int]], *, epsilon: float = 1e-6,
                 dtype: Any = None, param_dtype: Any = jnp.float32, use_bias: bool = True,
                 use_scale: bool = True, bias_init: Initializer = initializers.zeros_init(),
                 scale_init: Initializer = initializers.ones_init(), reduction_axes: Axes = -1,
                 feature_axes: Axes = -1, use_fast_variance: bool = True, impl: str = "auto",
                 rngs: nnx.Rngs):
        shape = _feature_shape(num_features)
        self.scale = _param(rngs, use_scale, scale_init, shape, param_dtype)
        self.bias = _param(rngs, use_bias, bias_init, shape, param_dtype)
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes
        self.use_fast_variance = use_fast_variance
        self.impl = impl

    def _kw(self) -> dict:
        return dict(reduction_axes=self.reduction_axes, feature_axes=self.feature_axes, epsilon=self.epsilon,
                    dtype=self.dtype, impl=self.impl)


class LayerNorm(_Norm):
    """Layer normalization (Ba et al. 2016) as ``flax.nnx.LayerNorm``; see :func:`rnlib.ops.layer_norm`.

    ``x: (..., num_features) -> y: same shape``; parameters ``scale``/``bias`` of shape ``(num_features,)``.
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.layer_norm(x, _value(self.scale), _value(self.bias), **self._kw())


class RMSNorm(_Norm):
    """RMS normalization as ``flax.nnx.RMSNorm``: ``x / sqrt(mean(x^2) + eps) * scale``; no bias."""

    def __init__(self, num_features: Union[int, Sequence[int]], *, epsilon: float = 1e-6,
                 dtype: Any = None, param_dtype: Any = jnp.float32, use_scale: bool = True,
                 scale_init: Initializer = initializers.ones_init(), reduction_axes: Axes = -1,
                 feature_axes: Axes = -1, use_fast_variance: bool = True, impl: str = "auto",
                 rngs: nnx.Rngs):
        super().__init__(num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_bias=False,
                         use_scale=use_scale, scale_init=scale_init, reduction_axes=reduction_axes,
                         feature_axes=feature_axes, use_fast_variance=use_fast_variance, impl=impl, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.rms_norm(x, _value(self.scale), **self._kw())


class AddNorm(_Norm):
    """Fused residual add + norm for pre-norm residual streams; see :func:`rnlib.ops.add_norm`.

    ``__call__(x, residual) -> (y, new_residual)``: ``new_residual = x + residual`` (kept in
    ``residual_dtype``), ``y = norm(new_residual)``. ``norm`` is "layer" or "rms" (no bias for "rms").
    """

    def __init__(self, num_features: Union[int, Sequence[int]], *, norm: str = "layer",
                 residual_dtype: Any = None, use_bias: bool = True, rngs: nnx.Rngs, **kwargs):
        super().__init__(num_features, use_bias=use_bias and norm == "layer", rngs=rngs, **kwargs)
        self.norm = norm
        self.residual_dtype = residual_dtype

    def __call__(self, x: jax.Array, residual: jax.Array) -> tuple[jax.Array, jax.Array]:
        return ops.add_norm(x, residual, _value(self.scale), _value(self.bias), norm=self.norm,
                            residual_dtype=self.residual_dtype, **self._kw())


class StatsLayerNorm(_Norm):
    """Layer norm that re-injects each example's mean and log-std; see :func:`rnlib.ops.layer_norm_with_stats`.

    Extra parameter ``stats_scale`` of shape ``(2, num_features)``, initialised to zeros so the module starts
    as a plain LayerNorm.
    """

    def __init__(self, num_features: Union[int, Sequence[int]], *,
                 stats_scale_init: Initializer = initializers.zeros_init(), rngs: nnx.Rngs, **kwargs):
        super().__init__(num_features, rngs=rngs, **kwargs)
        shape = (2,) + _feature_shape(num_features)
        self.stats_scale = nnx.Param(stats_scale_init(rngs.params(), shape, self.param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.layer_norm_with_stats(x, _value(self.scale), _value(self.bias), self.stats_scale[...],
                                         **self._kw())
