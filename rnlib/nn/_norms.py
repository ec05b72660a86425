"""Flax NNX norm modules: drop-ins for ``flax.nnx.LayerNorm``/``RMSNorm`` that own parameters and call rnlib.

Every constructor argument and call keyword of Flax's classes is accepted with Flax's meaning and defaults
(``epsilon=1e-6``; parameters ``scale``/``bias`` of shape ``(num_features,)``, with ``scale_metadata``/
``bias_metadata`` passed to ``nnx.Param``), so swapping a Flax norm for rnlib's keeps the parameter tree.
Differences, all deliberate:

* Numerics: statistics are always float32 (float64 for float64 input) with the exact, shifted two-pass
  variance. ``use_fast_variance`` is accepted and has no effect: rnlib is always exact (Flax's fast variance
  ``E[x^2] - E[x]^2`` loses every digit when ``|mean| >> std``).
* With an explicit ``dtype`` and Flax's default ``promote_dtype``, Flax rounds ``x`` and the parameters to
  ``dtype`` before normalising; rnlib computes from the unrounded values and rounds once, at the end.

Output dtype (Flax's rule): ``dtype`` if given, else the promotion of the input and parameter dtypes, e.g.
bfloat16 input with float32 parameters gives float32; integer input is promoted to float32.
Calls without ``mask``/``axis_name`` run on the fused kernels (:func:`rnlib.ops.layer_norm`/``rms_norm``,
picked by ``impl``); the rest run on XLA with the same numerics.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes
from flax.nnx.nn import initializers

import rnlib._compat  # noqa: F401  (fails early on an unsupported jax/flax pair)
from rnlib import ops
from rnlib.ops._norm_general import (Axes, feature_shape, fused_or_general, fused_or_general_with_stats,
                                     result_dtype)

Initializer = Any
PromoteDtypeFn = Any
_FLAX_PROMOTE = nnx_dtypes.promote_dtype
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _feature_shape(num_features: Union[int, Sequence[int]]) -> tuple[int, ...]:
    shape = (num_features,) if isinstance(num_features, int) else tuple(num_features)
    if not shape or any(not isinstance(n, int) or isinstance(n, bool) or n <= 0 for n in shape):
        raise ValueError(f"num_features must be a positive int (the size of the normalised feature axis), "
                         f"got {num_features!r}")
    return shape


def _param(rngs: nnx.Rngs, use: bool, init: Initializer, shape: tuple[int, ...], dtype: Any,
           metadata: Mapping[str, Any]):
    if not use:
        return nnx.data(None) if hasattr(nnx, "data") else None
    return nnx.Param(init(rngs.params(), shape, dtype), **metadata)


def _value(p) -> Optional[jax.Array]:
    return None if p is None else p[...]


class _Norm(nnx.Module):
    """Shared constructor of the norm modules (not public)."""

    def __init__(self, num_features: Union[int, Sequence[int]], *, epsilon: float = 1e-6,
                 dtype: Any = None, param_dtype: Any = jnp.float32, use_bias: bool = True,
                 use_scale: bool = True, bias_init: Initializer = initializers.zeros_init(),
                 scale_init: Initializer = initializers.ones_init(), reduction_axes: Axes = -1,
                 feature_axes: Axes = -1, axis_name: Optional[str] = None, axis_index_groups: Any = None,
                 use_fast_variance: bool = True, promote_dtype: PromoteDtypeFn = _FLAX_PROMOTE,
                 rngs: nnx.Rngs, bias_metadata: Mapping[str, Any] = _EMPTY,
                 scale_metadata: Mapping[str, Any] = _EMPTY, impl: str = "auto"):
        shape = _feature_shape(num_features)
        self.scale = _param(rngs, use_scale, scale_init, shape, param_dtype, scale_metadata)
        self.bias = _param(rngs, use_bias, bias_init, shape, param_dtype, bias_metadata)
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype
        self.impl = impl

    def _promote(self, *args: Optional[jax.Array]) -> tuple[tuple[Optional[jax.Array], ...], Any]:
        """Flax's ``promote_dtype`` step. The default one is not applied to the arrays (the kernels read the
        input in its own dtype and round once at the end); its output dtype is passed on instead."""
        if self.promote_dtype is _FLAX_PROMOTE:
            return args, result_dtype(*args, dtype=self.dtype)
        args = tuple(self.promote_dtype(args, dtype=self.dtype))
        return args, result_dtype(*args, dtype=self.dtype)

    def _norm(self, x: jax.Array, mask: Optional[jax.Array], rms: bool) -> jax.Array:
        params = (_value(self.scale),) if rms else (_value(self.scale), _value(self.bias))
        (x, scale, *rest), out_dtype = self._promote(x, *params)
        return fused_or_general(x, scale, rest[0] if rest else None, rms=rms, reduction_axes=self.reduction_axes,
                                feature_axes=self.feature_axes, epsilon=self.epsilon, dtype=out_dtype, mask=mask,
                                axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
                                impl=self.impl)


class LayerNorm(_Norm):
    """Layer normalization (Ba et al. 2016), a drop-in for ``flax.nnx.LayerNorm``.

    ``x: (..., num_features) -> y`` of the same shape,
    ``y = (x - mean) / sqrt(var + epsilon) * scale + bias`` with ``mean``/``var`` over ``reduction_axes``
    (only where ``mask`` is True; across the named axis ``axis_name`` too when given).

    Args: as ``flax.nnx.LayerNorm`` (see the module docstring for dtype and numerics), plus ``impl`` ("auto" |
    "xla" | "pallas" | "native": the kernel for calls without mask/axis_name; see :func:`rnlib.ops.layer_norm`).
    ``use_fast_variance`` is accepted and ignored: rnlib always computes the exact variance.
    """

    def __call__(self, x: jax.Array, *, mask: Optional[jax.Array] = None) -> jax.Array:
        """``mask``: bool array broadcastable to ``x``; only True positions enter the statistics."""
        return self._norm(x, mask, rms=False)


class RMSNorm(_Norm):
    """RMS normalization, a drop-in for ``flax.nnx.RMSNorm``: ``y = x / sqrt(mean(x^2) + epsilon) * scale``.

    Parameter ``scale`` only. Arguments as :class:`LayerNorm` without the bias ones; ``use_fast_variance`` is
    accepted and has no effect.
    """

    def __init__(self, num_features: Union[int, Sequence[int]], *, epsilon: float = 1e-6,
                 dtype: Any = None, param_dtype: Any = jnp.float32, use_scale: bool = True,
                 scale_init: Initializer = initializers.ones, reduction_axes: Axes = -1,
                 feature_axes: Axes = -1, axis_name: Optional[str] = None, axis_index_groups: Any = None,
                 use_fast_variance: bool = True, promote_dtype: PromoteDtypeFn = _FLAX_PROMOTE,
                 rngs: nnx.Rngs, scale_metadata: Mapping[str, Any] = _EMPTY, impl: str = "auto"):
        super().__init__(num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_bias=False,
                         use_scale=use_scale, scale_init=scale_init, reduction_axes=reduction_axes,
                         feature_axes=feature_axes, axis_name=axis_name, axis_index_groups=axis_index_groups,
                         use_fast_variance=use_fast_variance, promote_dtype=promote_dtype, rngs=rngs,
                         scale_metadata=scale_metadata, impl=impl)

    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        """``mask``: bool array broadcastable to ``x``; only True positions enter the statistics."""
        return self._norm(x, mask, rms=True)


class AddNorm(_Norm):
    """Fused residual add + norm for pre-norm residual streams; see :func:`rnlib.ops.add_norm`.

    ``__call__(x, residual, *, mask=None) -> (y, new_residual)``: ``new_residual = x + residual`` (kept in
    ``residual_dtype``, default the promotion of the two), ``y = norm(new_residual)`` with ``norm`` "layer" or
    "rms" (no bias for "rms"). ``y`` follows :class:`LayerNorm`'s rules applied to ``new_residual``, i.e. it
    equals ``LayerNorm(...)(x + residual)``; constructor arguments as :class:`LayerNorm`.
    """

    def __init__(self, num_features: Union[int, Sequence[int]], *, norm: str = "layer",
                 residual_dtype: Any = None, use_bias: bool = True, rngs: nnx.Rngs, **kwargs):
        if norm not in ("layer", "rms"):
            raise ValueError(f"norm must be 'layer' or 'rms', got {norm!r}")
        super().__init__(num_features, use_bias=use_bias and norm == "layer", rngs=rngs, **kwargs)
        self.norm = norm
        self.residual_dtype = residual_dtype

    def __call__(self, x: jax.Array, residual: jax.Array, *,
                 mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
        x, residual = jnp.asarray(x), jnp.asarray(residual)
        h_dtype = jnp.dtype(jnp.promote_types(x.dtype, residual.dtype) if self.residual_dtype is None
                            else self.residual_dtype)
        rms = self.norm == "rms"
        if (mask is None and self.axis_name is None and self.promote_dtype is _FLAX_PROMOTE
                and all(jnp.issubdtype(d, jnp.floating) for d in (x.dtype, residual.dtype, h_dtype))):
            scale, bias = _value(self.scale), None if rms else _value(self.bias)
            out = result_dtype(jnp.zeros((), h_dtype), scale, bias, dtype=self.dtype)
            return ops.add_norm(x, residual, scale, bias, norm=self.norm, residual_dtype=self.residual_dtype,
                                reduction_axes=self.reduction_axes, feature_axes=self.feature_axes,
                                epsilon=self.epsilon, dtype=out, impl=self.impl)
        h = (x.astype(h_dtype) + residual.astype(h_dtype)).astype(h_dtype)
        return self._norm(h, mask, rms=rms), h


class StatsLayerNorm(_Norm):
    """Layer norm that re-injects each example's mean and log-std; see :func:`rnlib.ops.layer_norm_with_stats`.

    ``y = LayerNorm(x) + stats_scale[0] * mean + stats_scale[1] * log(sqrt(var + epsilon))``. Extra parameter
    ``stats_scale`` of shape ``(2, num_features)``, initialised to zeros so the module starts as a plain
    LayerNorm. ``__call__(x, *, mask=None)``; constructor arguments and dtype rules as :class:`LayerNorm`.
    """

    def __init__(self, num_features: Union[int, Sequence[int]], *,
                 stats_scale_init: Initializer = initializers.zeros_init(), rngs: nnx.Rngs, **kwargs):
        super().__init__(num_features, rngs=rngs, **kwargs)
        shape = (2,) + _feature_shape(num_features)
        self.stats_scale = nnx.Param(stats_scale_init(rngs.params(), shape, self.param_dtype))

    def __call__(self, x: jax.Array, *, mask: Optional[jax.Array] = None) -> jax.Array:
        (x, scale, bias, stats_scale), out = self._promote(x, _value(self.scale), _value(self.bias),
                                                           self.stats_scale[...])
        x = jnp.asarray(x)
        fshape = feature_shape(x.shape, self.feature_axes)
        reshape = lambda p, s: None if p is None else jnp.reshape(p, s)  # noqa: E731  (NNX's flat params)
        scale, bias = reshape(scale, fshape), reshape(bias, fshape)
        stats_scale = reshape(stats_scale, (2,) + fshape)
        return fused_or_general_with_stats(x, scale, bias, stats_scale, reduction_axes=self.reduction_axes,
                                           feature_axes=self.feature_axes, epsilon=self.epsilon, dtype=out,
                                           mask=mask, axis_name=self.axis_name,
                                           axis_index_groups=self.axis_index_groups, impl=self.impl)

