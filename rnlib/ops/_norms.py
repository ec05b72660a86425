"""Public norm functions: layer norm, RMS norm, fused residual-add + norm, and the stats-reinjecting LN.

Every function follows one numerics contract: float32 statistics (float64 for float64 input),
two-pass variance clamped at 0, ``rsqrt(var + epsilon)``, parameters broadcast like Flax
(``reduction_axes``/``feature_axes``), output in ``dtype`` if given else the input dtype, cast once at the end,
and a hand-written backward (``jax.custom_vjp``) that saves float32 ``mean``/``rstd``.
Reverse-over-reverse differentiation (e.g. gradient penalties) works on every backend; forward-mode
(``jax.jvp``/``jacfwd``) does not, as for any ``custom_vjp``.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from rnlib import _platforms
from rnlib.ops import _args, _backends, _norm_math
from rnlib.ops._args import Axes, make_layout
from rnlib.ops._norm_vjp import norm2d

Array = jax.Array
NORMS = ("layer", "rms")


def _normalize(x, residual, scale, bias, stats_scale, *, rms: bool, reduction_axes: Axes, feature_axes: Axes,
               epsilon: float, dtype: Any, residual_dtype: Any, impl: str, platform: Optional[str]):
    """Shared body of every public norm: validate, go to 2-D, run :func:`norm2d`, come back. Returns (y, h)."""
    x = _args.as_float_array(x, "x")
    lay = make_layout(x.shape, reduction_axes, feature_axes)
    scale = _args.check_param(scale, "scale", lay.param_shape, x.shape, lay.feature)
    bias = _args.check_param(bias, "bias", lay.param_shape, x.shape, lay.feature)
    if stats_scale is not None:
        stats_scale = _args.check_param(stats_scale, "stats_scale", (2,) + lay.param_shape, x.shape,
                                        lay.feature)
    out_dtype = _args.check_dtype(dtype, "dtype") or x.dtype
    if residual is not None:
        residual = _args.check_residual(residual, x.shape)
        residual_dtype = (_args.check_dtype(residual_dtype, "residual_dtype")
                          or jnp.promote_types(x.dtype, residual.dtype))
    elif residual_dtype is not None:
        raise ValueError("residual_dtype is only meaningful together with a residual")
    _args.check_choice(impl, "impl", _backends.IMPLS)
    cdt = _norm_math.compute_dtype(x.dtype, None if residual is None else residual.dtype)
    eps = _args.check_epsilon(epsilon, cdt)
    with_stats = stats_scale is not None
    if with_stats and impl in ("pallas", "native"):
        raise ValueError(f"layer_norm_with_stats has no {impl} kernel; use impl='auto' or 'xla'")

    in_core = not lay.features_in_rows       # parameters fold into (W,) vectors the backend applies
    plain = in_core and not with_stats       # the backend's output is already the answer
    spec = _backends.NormSpec(
        rows=lay.rows, width=lay.width, rms=rms, epsilon=eps, x_dtype=x.dtype,
        out_dtype=jnp.dtype(out_dtype if plain else cdt), platform=_platforms.resolve(platform),
        scale_dtype=None if scale is None or not in_core else scale.dtype,
        bias_dtype=None if bias is None or not in_core else bias.dtype,
        residual_in_dtype=None if residual is None else residual.dtype,
        residual_dtype=None if residual is None else jnp.dtype(residual_dtype),
        params_in_rows=lay.features_in_rows, with_stats=with_stats)
    to_w = lay.param_to_width
    out = norm2d(spec, _backends.choose(impl, spec), lay.to_2d(x),
                 None if residual is None else lay.to_2d(residual),
                 None if spec.scale_dtype is None else to_w(scale),
                 None if spec.bias_dtype is None else to_w(bias))
    y2, h2 = out[0], out[1]
    if with_stats:
        mean, rstd = out[2], out[3]
        row_terms = (mean, -jnp.log(rstd))   # per-example mean and log(sigma), sigma = sqrt(var + eps)
        if in_core:
            for k in range(2):
                y2 = y2 + to_w(stats_scale[k]).astype(cdt)[None, :] * row_terms[k][:, None]
        else:
            y = lay.from_2d(y2)
            for k in range(2):
                term = lay.from_2d(jnp.broadcast_to(row_terms[k][:, None], y2.shape))
                y = y + lay.param_to_full(stats_scale[k]).astype(cdt) * term
            y2 = lay.to_2d(y)
    y = lay.from_2d(y2)
    if not in_core:
        if scale is not None:
            y = y * lay.param_to_full(scale).astype(cdt)
        if bias is not None:
            y = y + lay.param_to_full(bias).astype(cdt)
    if not plain:
        y = y.astype(out_dtype)
    return y, None if h2 is None else lay.from_2d(h2)


def layer_norm(x: Array, scale: Optional[Array] = None, bias: Optional[Array] = None, *,
               reduction_axes: Axes = -1, feature_axes: Axes = -1, epsilon: float = 1e-6,
               dtype: Any = None, impl: str = "auto", platform: Optional[str] = None) -> Array:
    """Layer normalization (Ba et al. 2016).

    ``y = (x - mean) / sqrt(var + epsilon) * scale + bias`` with ``mean``/``var`` over ``reduction_axes``.

    Args:
      x: input of any shape ``(..., D)``; float16/bfloat16/float32/float64.
      scale, bias: optional parameters with the shape of x's ``feature_axes`` (``(D,)`` by default).
      reduction_axes: axes normalised over (Flax convention). feature_axes: axes that carry parameters.
      epsilon: static float, at least the smallest normal number of the statistics dtype (float32: 1.2e-38).
      dtype: output dtype (default: ``x.dtype``).
      impl: "auto" (Pallas on GPU/TPU, the native kernel on CPU, when supported; else XLA), "xla", "pallas"
        (interpret mode on CPU) or "native" (the C++ CPU kernel, an XLA FFI call).
      platform: None (default backend) or "cpu"/"gpu"/"tpu": the lowering to trace for.

    Returns:
      ``y`` with ``x``'s shape.
    """
    return _normalize(x, None, scale, bias, None, rms=False, reduction_axes=reduction_axes,
                      feature_axes=feature_axes, epsilon=epsilon, dtype=dtype, residual_dtype=None,
                      impl=impl, platform=platform)[0]


def rms_norm(x: Array, scale: Optional[Array] = None, *, reduction_axes: Axes = -1, feature_axes: Axes = -1,
             epsilon: float = 1e-6, dtype: Any = None, impl: str = "auto",
             platform: Optional[str] = None) -> Array:
    """RMS normalization: ``y = x / sqrt(mean(x^2) + epsilon) * scale`` over ``reduction_axes``.

    Arguments as :func:`layer_norm` (no bias, no mean subtraction). Returns ``y`` with ``x``'s shape.
    """
    return _normalize(x, None, scale, None, None, rms=True, reduction_axes=reduction_axes,
                      feature_axes=feature_axes, epsilon=epsilon, dtype=dtype, residual_dtype=None,
                      impl=impl, platform=platform)[0]


def add_norm(x: Array, residual: Array, scale: Optional[Array] = None, bias: Optional[Array] = None, *,
             norm: str = "layer", residual_dtype: Any = None, reduction_axes: Axes = -1,
             feature_axes: Axes = -1, epsilon: float = 1e-6, dtype: Any = None, impl: str = "auto",
             platform: Optional[str] = None) -> tuple[Array, Array]:
    """Fused residual add + norm, the pre-norm residual-stream step.

    ``new_residual = (x + residual)`` stored in ``residual_dtype`` (default: the promoted dtype of x and
    residual, e.g. keep a float32 stream under bfloat16 activations), ``y = norm(new_residual)``.
    One function so a kernel reads ``x`` and ``residual`` once and writes ``y`` and ``new_residual`` once.

    Args:
      x, residual: same shape ``(..., D)``. norm: "layer" or "rms" (``bias`` must be None for "rms").
      Other arguments as :func:`layer_norm`.

    Returns:
      ``(y, new_residual)``, both with ``x``'s shape; ``y`` in ``dtype`` (default ``x.dtype``).
    """
    _args.check_choice(norm, "norm", NORMS)
    if norm == "rms" and bias is not None:
        raise ValueError("add_norm(norm='rms') takes no bias")
    if residual is None:
        raise ValueError("add_norm needs a residual array; use layer_norm/rms_norm without one")
    return _normalize(x, residual, scale, bias, None, rms=norm == "rms", reduction_axes=reduction_axes,
                      feature_axes=feature_axes, epsilon=epsilon, dtype=dtype, residual_dtype=residual_dtype,
                      impl=impl, platform=platform)


def layer_norm_with_stats(x: Array, scale: Optional[Array], bias: Optional[Array], stats_scale: Array, *,
                          reduction_axes: Axes = -1, feature_axes: Axes = -1, epsilon: float = 1e-6,
                          dtype: Any = None, impl: str = "auto", platform: Optional[str] = None) -> Array:
    """Layer norm that re-injects each example's statistics.

    ``y = scale * x_hat + bias + stats_scale[0] * mean + stats_scale[1] * log(sigma)``, with
    ``sigma = sqrt(var + epsilon)`` per example (per normalised row).

    Why: LN makes each example's activations mean 0 / std 1, so it throws away the example's mean and spread.
    Some tasks carry their signal exactly there -- a running count lives in a layer's mean, edge density in
    its variance. With ``stats_scale`` initialised to zeros (as the modules do) this starts as plain LN and
    learns, per feature, how much of the two statistics to put back.

    Args:
      x: ``(..., D)``. scale, bias: feature-shaped or None. stats_scale: ``(2, *feature_shape)``.
      Other arguments as :func:`layer_norm`.

    Returns:
      ``y`` with ``x``'s shape.
    """
    if stats_scale is None:
        raise ValueError("layer_norm_with_stats needs stats_scale of shape (2, *feature_shape)")
    return _normalize(x, None, scale, bias, stats_scale, rms=False, reduction_axes=reduction_axes,
                      feature_axes=feature_axes, epsilon=epsilon, dtype=dtype, residual_dtype=None,
                      impl=impl, platform=platform)[0]
