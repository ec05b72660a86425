"""Layer/RMS norm with a statistics mask and statistics across a named mapped axis, on plain XLA.

The fused paths normalise complete rows on one device. This module serves the rest of Flax's norm arguments:
``mask`` (only the selected elements enter the statistics) and ``axis_name``/``axis_index_groups``
(statistics summed across a ``vmap``/``shard_map``/``pmap`` axis). It keeps rnlib's numerics contract:

* statistics in float32 (float64 for float64 input, complex64/128 for complex input);
* an exact, shifted two-pass variance: with ``m1`` the (masked, cross-device) mean,
  ``c = mean(x - m1)`` and ``var = mean(|x - m1|^2) - |c|^2`` (clamped at 0), ``mean = m1 + c``.
  The second pass works on ``x - m1``, so ``|mean| >> std`` loses nothing to cancellation, and the
  correction ``c`` removes the rounding error of ``m1`` itself;
* ``y = (x - mean) * rsqrt(var + epsilon) * scale + bias``, cast once to ``dtype`` at the end.

Everything is plain ``jax.numpy``/``lax``, so autodiff (forward and reverse) gives the gradient, and
``lax.psum`` gives the cross-device sums.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rnlib.ops._norms import layer_norm, layer_norm_with_stats, rms_norm

Array = jax.Array
Axes = Union[int, Sequence[int]]


def canonical_axes(axes: Axes, ndim: int, name: str) -> tuple[int, ...]:
    """``axes`` as sorted non-negative unique ints; ValueError naming ``name`` if out of range or empty."""
    seq = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)
    if not seq:
        raise ValueError(f"{name} must name at least one axis, got {axes!r}")
    out = set()
    for a in seq:
        if not isinstance(a, (int, np.integer)) or isinstance(a, bool):
            raise TypeError(f"{name} must be ints, got {axes!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"{name}={axes!r} is out of range for an input of rank {ndim}")
        out.add(int(a) % ndim)
    return tuple(sorted(out))


def feature_shape(x_shape: Sequence[int], feature_axes: Axes) -> tuple[int, ...]:
    """Shape of Flax's linen ``scale``/``bias`` for an input of ``x_shape``: the sizes of the feature axes."""
    return tuple(int(x_shape[a]) for a in canonical_axes(feature_axes, len(x_shape), "feature_axes"))


def result_dtype(*arrays: Any, dtype: Any = None) -> np.dtype:
    """Flax's output-dtype rule: ``dtype`` if given, else the promotion of the non-None arguments' dtypes,
    promoted to at least float32 when that is not inexact (integer input gives float32)."""
    if dtype is not None:
        out = jnp.dtype(dtype)
    else:
        out = jnp.dtype(jnp.result_type(*(a for a in arrays if a is not None)))
        if not jnp.issubdtype(out, jnp.inexact):
            out = jnp.dtype(jnp.promote_types(jnp.float32, out))
    if not jnp.issubdtype(out, jnp.inexact):
        raise ValueError(f"dtype must be a floating or complex dtype, got {out}")
    return out


def _abs_sq(x: Array) -> Array:
    return lax.square(lax.real(x)) + lax.square(lax.imag(x)) if jnp.iscomplexobj(x) else lax.square(x)


def _param(p: Optional[Array], name: str, x_shape: tuple[int, ...], feat: tuple[int, ...]) -> Optional[Array]:
    """Reshape a parameter so it broadcasts against x: its size must be the product of the feature-axis sizes."""
    if p is None:
        return None
    p = jnp.asarray(p)
    want = tuple(x_shape[a] for a in feat)
    if p.size != int(np.prod(want, dtype=np.int64)):
        raise ValueError(f"{name} has shape {p.shape}, but x of shape {x_shape} with feature_axes={feat} needs "
                         f"{int(np.prod(want, dtype=np.int64))} entries (shape {want})")
    return p.reshape(tuple(x_shape[a] if a in feat else 1 for a in range(len(x_shape))))


def _shifted_stats(x: Array, *, rms: bool, reduction_axes: Axes, mask: Optional[Array],
                  axis_name: Any, axis_index_groups: Any) -> tuple[Array, Array, Array]:
    """``(m1, c, var)`` with ``mean = m1 + c``; see :func:`norm_stats`. Kept apart so ``x - mean`` can be formed
    as ``(x - m1) - c``: ``x - m1`` is exact for ``x`` near ``m1`` and ``c`` is small, so the centred value
    keeps the digits that rounding ``m1 + c`` to the statistics dtype would lose when ``|mean| >> std``."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.float32)
    if x.ndim == 0:
        raise ValueError("x must have at least one axis to normalise, got a scalar (shape ())")
    sdt = jnp.promote_types(x.dtype, jnp.float32)
    axes = canonical_axes(reduction_axes, x.ndim, "reduction_axes")
    xs = x.astype(sdt)
    real = jnp.finfo(sdt).dtype          # float32 for complex64, float64 for complex128
    if mask is not None:
        mask = jnp.asarray(mask)
        try:
            fits = jnp.broadcast_shapes(mask.shape, x.shape) == x.shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to x of shape {x.shape}")
        mask = jnp.broadcast_to(mask.astype(bool), x.shape)

    def total(*terms: Array) -> tuple[Array, ...]:
        # One reduction per term, then one multi-operand psum for all of them (one collective).
        sums = [jnp.sum(t if mask is None else jnp.where(mask, t, jnp.zeros((), t.dtype)), axes, keepdims=True)
                for t in terms]
        if axis_name is None:
            return tuple(sums)
        return tuple(lax.psum(tuple(sums), axis_name, axis_index_groups=axis_index_groups))

    ones = jnp.ones((), real)
    if rms:
        count, sq = total(jnp.broadcast_to(ones, x.shape), _abs_sq(xs))
        zero = jnp.zeros_like(sq, dtype=sdt)
        return zero, zero, sq / count
    count, s1 = total(jnp.broadcast_to(ones, x.shape), xs)
    m1 = s1 / count
    d = xs - m1
    s_d, s_d2 = total(d, _abs_sq(d))
    c = s_d / count
    var = jnp.maximum(s_d2.real / count - _abs_sq(c), 0.0).astype(real)
    return m1, c, var


def norm_stats(x: Array, *, rms: bool, reduction_axes: Axes, mask: Optional[Array] = None,
               axis_name: Any = None, axis_index_groups: Any = None) -> tuple[Array, Array]:
    """Mean and variance of ``x`` over ``reduction_axes`` (keepdims), optionally masked and across ``axis_name``.

    Args:
      x: any shape; integer input is promoted to float32.
      rms: if True, ``mean = 0`` and ``var = mean(|x|^2)`` (the mean square).
      reduction_axes: axes reduced. mask: bool (or 0/1) array broadcastable to ``x.shape``: only True positions
        enter the statistics. An all-False set gives NaN statistics, as in Flax.
      axis_name, axis_index_groups: sums and counts are ``lax.psum``-ed over this named axis (and groups).

    Returns:
      ``(mean, var)`` in the statistics dtype (``promote_types(x.dtype, float32)``; var real), each of ``x``'s
      rank with size 1 on the reduced axes; ``var >= 0``.
    """
    m1, c, var = _shifted_stats(x, rms=rms, reduction_axes=reduction_axes, mask=mask, axis_name=axis_name,
                                axis_index_groups=axis_index_groups)
    return m1 + c, var


def general_norm(x: Array, scale: Optional[Array], bias: Optional[Array], *, rms: bool, reduction_axes: Axes,
                 feature_axes: Axes, epsilon: float, dtype: Any, mask: Optional[Array] = None,
                 axis_name: Any = None, axis_index_groups: Any = None) -> Array:
    """Layer norm (``rms=False``) or RMS norm (``rms=True``) with Flax's full argument set, on XLA.

    ``y = (x - mean) * rsqrt(var + epsilon) * scale + bias`` with ``mean``/``var`` from :func:`norm_stats`
    (RMS: ``mean = 0``, ``var = mean(|x|^2)``); ``x - mean`` is formed as ``(x - m1) - c``. Every position of
    ``x`` is normalised; ``mask`` only selects which positions enter the statistics (Flax's meaning).

    Args:
      x: ``(..., D)`` or any shape; float, complex or integer (integers are promoted to float32).
      scale, bias: None or arrays with ``prod(x.shape[a] for a in feature_axes)`` entries (Flax's linen shape
        ``x.shape[feature_axes]`` or NNX's flat ``(num_features,)``), broadcast over the other axes.
      rms: RMS norm instead of layer norm (``bias`` is still added if given).
      reduction_axes: axes normalised over. feature_axes: axes that carry parameter entries.
      epsilon: added to the variance, >= 0.
      dtype: output dtype; None gives Flax's rule (promotion of x, scale and bias, at least float32).
      mask: bool array broadcastable to ``x.shape`` selecting the statistics' elements.
      axis_name, axis_index_groups: named mapped axis (and optional groups of its indices) over which the
        statistics are also taken: sums and counts are ``psum``-ed, so the result equals normalising the
        concatenation of every member's ``x``.

    Returns:
      ``y`` with ``x``'s shape in ``dtype``.
    """
    x = jnp.asarray(x)
    out_dtype = result_dtype(x, scale, bias, dtype=dtype)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.float32)
    if isinstance(epsilon, (int, float, np.floating, np.integer)) and not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    m1, c, var = _shifted_stats(x, rms=rms, reduction_axes=reduction_axes, mask=mask, axis_name=axis_name,
                                axis_index_groups=axis_index_groups)
    feat = canonical_axes(feature_axes, x.ndim, "feature_axes")
    scale = _param(scale, "scale", x.shape, feat)
    bias = _param(bias, "bias", x.shape, feat)
    sdt = m1.dtype
    mul = lax.rsqrt(var + jnp.asarray(epsilon, var.dtype)).astype(sdt)
    if scale is not None:
        mul = mul * scale.astype(jnp.promote_types(sdt, scale.dtype))
    y = ((x.astype(sdt) - m1) - c) * mul
    if bias is not None:
        y = y + bias.astype(jnp.promote_types(sdt, bias.dtype))
    return y.astype(out_dtype)


_FUSED_DTYPES = tuple(jnp.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))


def fused_or_general(x: Array, scale: Optional[Array], bias: Optional[Array], *, rms: bool, reduction_axes: Axes,
                     feature_axes: Axes, epsilon: float, dtype: Any, mask: Optional[Array] = None,
                     axis_name: Any = None, axis_index_groups: Any = None, impl: str = "auto") -> Array:
    """What the Flax-compatible modules call: :func:`rnlib.ops.layer_norm`/``rms_norm`` (fused kernels) when
    they can serve the call, :func:`general_norm` otherwise (mask, axis_name, complex input, epsilon == 0).

    ``scale``/``bias`` may have Flax NNX's flat ``(num_features,)`` shape; they are reshaped to the
    feature-axis sizes. ``dtype`` None gives Flax's output rule (:func:`result_dtype`). Arguments otherwise as
    :func:`general_norm`.
    """
    x = jnp.asarray(x)
    out_dtype = result_dtype(x, scale, bias, dtype=dtype)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(out_dtype if jnp.issubdtype(out_dtype, jnp.floating) else jnp.float32)
    fused = (mask is None and axis_name is None and x.dtype in _FUSED_DTYPES and out_dtype in _FUSED_DTYPES
             and isinstance(epsilon, (float, int, np.floating)) and float(epsilon) > 0
             and all(p is None or jnp.dtype(p.dtype) in _FUSED_DTYPES for p in (scale, bias))
             and not (rms and bias is not None))
    if not fused:
        return general_norm(x, scale, bias, rms=rms, reduction_axes=reduction_axes, feature_axes=feature_axes,
                            epsilon=epsilon, dtype=out_dtype, mask=mask, axis_name=axis_name,
                            axis_index_groups=axis_index_groups)
    shape = feature_shape(x.shape, feature_axes)
    scale, bias = (None if p is None else _flat_to(p, shape, name) for p, name in ((scale, "scale"),
                                                                                     (bias, "bias")))
    kw = dict(reduction_axes=reduction_axes, feature_axes=feature_axes, epsilon=float(epsilon), dtype=out_dtype,
              impl=impl)
    return rms_norm(x, scale, **kw) if rms else layer_norm(x, scale, bias, **kw)


def _flat_to(p: Array, shape: tuple[int, ...], name: str) -> Array:
    p = jnp.asarray(p)
    if p.shape == shape:
        return p
    if p.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"{name} has shape {p.shape}, but the input's feature axes have sizes {shape} "
                         f"({int(np.prod(shape, dtype=np.int64))} entries)")
    return p.reshape(shape)



def general_norm_with_stats(x: Array, scale: Optional[Array], bias: Optional[Array], stats_scale: Array, *,
                            reduction_axes: Axes, feature_axes: Axes, epsilon: float, dtype: Any,
                            mask: Optional[Array] = None, axis_name: Any = None,
                            axis_index_groups: Any = None) -> Array:
    """Layer norm that re-injects the statistics, on XLA (the mask / axis_name form of
    :func:`rnlib.ops.layer_norm_with_stats`):
    ``y = LN(x) + stats_scale[0] * mean + stats_scale[1] * log(sqrt(var + epsilon))``.

    ``stats_scale`` has ``2 * prod(feature sizes)`` entries (shape ``(2, *feature_shape)`` or NNX's
    ``(2, num_features)``); other arguments as :func:`general_norm`. Returns ``y`` with ``x``'s shape.
    """
    x = jnp.asarray(x)
    out_dtype = result_dtype(x, scale, bias, stats_scale, dtype=dtype)
    kw = dict(reduction_axes=reduction_axes, mask=mask, axis_name=axis_name, axis_index_groups=axis_index_groups)
    mean, var = norm_stats(x, rms=False, **kw)
    y = general_norm(x, scale, bias, rms=False, feature_axes=feature_axes, epsilon=epsilon, dtype=mean.dtype, **kw)
    feat = canonical_axes(feature_axes, x.ndim, "feature_axes")
    ss = jnp.asarray(stats_scale).reshape((2, -1))
    a0, a1 = (_param(ss[k], "stats_scale[k]", x.shape, feat) for k in range(2))
    y = y + a0 * mean + a1 * (0.5 * jnp.log(var + jnp.asarray(epsilon, var.dtype)))
    return y.astype(out_dtype)


def fused_or_general_with_stats(x: Array, scale: Optional[Array], bias: Optional[Array], stats_scale: Array, *,
                                reduction_axes: Axes, feature_axes: Axes, epsilon: float, dtype: Any,
                                mask: Optional[Array] = None, axis_name: Any = None, axis_index_groups: Any = None,
                                impl: str = "auto") -> Array:
    """The stats-reinjecting LN's router, as :func:`fused_or_general`: :func:`rnlib.ops.layer_norm_with_stats`
    when it can serve the call, :func:`general_norm_with_stats` otherwise. ``dtype``: the output dtype (resolved)."""
    kw = dict(reduction_axes=reduction_axes, feature_axes=feature_axes, epsilon=epsilon, dtype=dtype)
    if (mask is None and axis_name is None and jnp.issubdtype(x.dtype, jnp.floating)
            and jnp.issubdtype(dtype, jnp.floating) and float(epsilon) > 0):
        return layer_norm_with_stats(x, scale, bias, stats_scale, impl=impl, **kw)
    return general_norm_with_stats(x, scale, bias, stats_scale, mask=mask, axis_name=axis_name,
                                   axis_index_groups=axis_index_groups, **kw)
