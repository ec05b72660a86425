"""XLA implementation of the 2-D norm forward and backward (the contract the Pallas kernels also implement).

Shapes: ``x``, ``residual``, ``h``, ``dy``: ``(R, W)``; ``scale``, ``bias``: ``(W,)``; ``mean``, ``rstd``: ``(R,)``.

Forward (``rms=False``; for ``rms=True`` take ``mean = 0``)::

    h    = x + residual                      (if a residual is given, rounded to residual_dtype)
    mean = sum(h) / W
    var  = max(sum((h - mean)^2) / W, 0)     two passes, never E[h^2] - E[h]^2
    rstd = rsqrt(var + eps),   x_hat = (h - mean) * rstd,   y = x_hat * scale + bias

Backward, with ``g = dy * scale``::

    dx     = rstd * (g - x_hat * mean(g * x_hat) - mean(g)) + dh_extra     (no ``mean(g)`` term for RMS)
    dscale = sum_rows(dy * x_hat),   dbias = sum_rows(dy)

Statistics are computed in float32 (float64 for float64 input). For precision when ``|mean| >> std``
(e.g. mean 1e4, std 1e-2, where a float32 mean alone is off by ~10 % of the std), each row is first shifted
by its first element ``c = h[:, 0]`` (an exact subtraction for nearby values), so the returned ``mean`` is
the mean of ``h - c`` (0 for RMS) and ``x_hat = ((h - c) - mean) * rstd``. This saved form is private to this
backend's forward/backward pair; :func:`true_mean` recovers the row mean.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def compute_dtype(*dtypes: Any) -> jnp.dtype:
    """float64 if any input is float64, else float32: the dtype statistics are kept in."""
    return jnp.dtype(jnp.float64) if any(jnp.dtype(d) == jnp.float64 for d in dtypes if d is not None) \
        else jnp.dtype(jnp.float32)


def _shifted(hf: Array, rms: bool) -> Array:
    """``hf - hf[:, :1]`` for layer norm (see module docstring), ``hf`` itself for RMS norm."""
    return hf if rms else hf - hf[:, :1]


def true_mean(h: Array, mean: Array) -> Array:
    """The row mean ``(R,)`` from the saved (shifted) ``mean`` of a layer norm and its input ``h``."""
    return h[:, 0].astype(mean.dtype) + mean


def x_hat(h: Array, mean: Array, rstd: Array, rms: bool) -> Array:
    """Normalised input ``(R, W)`` in the statistics dtype, from the saved statistics."""
    return (_shifted(h.astype(mean.dtype), rms) - mean[:, None]) * rstd[:, None]


def row_stats(hf: Array, epsilon: float, rms: bool) -> tuple[Array, Array, Array]:
    """Two-pass statistics of a float32/64 ``(R, W)`` array: ``(centred (R, W), mean (R,), rstd (R,))``."""
    s = _shifted(hf, rms)
    if rms:
        mean, d = jnp.zeros(hf.shape[:-1], hf.dtype), s
    else:
        mean = jnp.mean(s, axis=-1)
        d = s - mean[:, None]
    var = jnp.maximum(jnp.mean(jnp.square(d), axis=-1), 0)
    return d, mean, lax.rsqrt(var + jnp.asarray(epsilon, hf.dtype))


def norm_fwd(x: Array, residual: Optional[Array], scale: Optional[Array], bias: Optional[Array], *,
             epsilon: float, rms: bool, out_dtype: Any, residual_dtype: Any = None,
             platform: str = "cpu") -> tuple[Array, Optional[Array], Array, Array]:
    """Return ``(y, h, mean, rstd)``; ``h`` is the new residual (``None`` without a residual)."""
    del platform
    cdt = compute_dtype(x.dtype, None if residual is None else residual.dtype)
    h = None
    hf = x.astype(cdt)
    if residual is not None:
        h = (hf + residual.astype(cdt)).astype(residual_dtype)
        hf = h.astype(cdt)
    d, mean, rstd = row_stats(hf, epsilon, rms)
    y = d * rstd[:, None]
    if scale is not None:
        y = y * scale.astype(cdt)
    if bias is not None:
        y = y + bias.astype(cdt)
    return y.astype(out_dtype), h, mean, rstd


def norm_bwd(dy: Array, h: Array, mean: Array, rstd: Array, scale: Optional[Array],
             dh_extra: Optional[Array], *, rms: bool, has_bias: bool, dx_dtype: Any,
             platform: str = "cpu") -> tuple[Array, Optional[Array], Optional[Array]]:
    """Return ``(dx, dscale, dbias)`` for the forward above; ``dscale``/``dbias`` in the statistics dtype."""
    del platform
    cdt = mean.dtype
    dyf = dy.astype(cdt)
    xhat = x_hat(h, mean, rstd, rms)
    dscale = jnp.sum(dyf * xhat, axis=0) if scale is not None else None
    dbias = jnp.sum(dyf, axis=0) if has_bias else None
    g = dyf * scale.astype(cdt) if scale is not None else dyf
    inner = g - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True)
    if not rms:
        inner = inner - jnp.mean(g, axis=-1, keepdims=True)
    dx = rstd[:, None] * inner
    if dh_extra is not None:
        dx = dx + dh_extra.astype(cdt)
    return dx.astype(dx_dtype), dscale, dbias
