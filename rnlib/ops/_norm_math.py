"""The plain XLA maths of every norm on the 2-D form: the ``"xla"`` backend and the reference for all others.

Shapes: ``x``, ``residual``, ``h``, ``dy``, ``dh``: ``(R, W)``; ``scale``, ``bias``: ``(W,)``; ``mean``, ``rstd``:
``(R,)`` in the statistics dtype (float32, or float64 when an input is float64).

Forward (``rms=False``; for ``rms=True`` take ``mean = 0`` and no shift)::

    h    = x + residual                      (if a residual is given, rounded to residual_dtype)
    c    = h[:, 0]                           per-row shift (see below)
    mean = sum(h - c) / W
    var  = max(sum((h - c - mean)^2) / W, 0) two passes, never E[h^2] - E[h]^2
    rstd = rsqrt(var + eps),   x_hat = (h - c - mean) * rstd,   y = x_hat * scale + bias

Backward, with ``g = dy * scale``::

    dx     = rstd * (g - x_hat * mean_W(g * x_hat) - mean_W(g)) + dh     (no ``mean_W(g)`` term for RMS)
    dscale = sum_R(dy * x_hat),   dbias = sum_R(dy)

The shift by ``c = h[:, 0]`` keeps float32 precision when ``|mean| >> std`` (mean 1e4, std 1e-2: a float32 mean
alone is off by ~10 % of the std): subtracting nearby values is exact. So the saved ``mean`` is the mean of
``h - c``; :func:`true_mean` recovers the row mean. Every backend saves the same ``(mean, rstd)``, so every
backward can be differentiated through :func:`backward` (second-order derivatives, see ``_norm_vjp``).

These are plain ``jnp`` expressions on purpose: XLA fuses them well on every platform, and autodiff through them
gives the derivative of any backend's forward or backward.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def compute_dtype(*dtypes: Any) -> jnp.dtype:
    """float64 if any input is float64, else float32: the dtype statistics are kept in."""
    wide = any(d is not None and jnp.dtype(d) == jnp.float64 for d in dtypes)
    return jnp.dtype(jnp.float64 if wide else jnp.float32)


def _shifted(hf: Array, rms: bool) -> Array:
    """``hf - hf[:, :1]`` for layer norm (see module docstring), ``hf`` itself for RMS norm."""
    return hf if rms else hf - hf[:, :1]


def true_mean(h: Array, mean: Array) -> Array:
    """The row mean ``(R,)`` of a layer norm's input ``h`` from its saved (shifted) ``mean``."""
    return h[:, 0].astype(mean.dtype) + mean


def x_hat(h: Array, mean: Array, rstd: Array, rms: bool) -> Array:
    """Normalised input ``(R, W)`` in the statistics dtype, from the saved statistics."""
    return (_shifted(h.astype(mean.dtype), rms) - mean[:, None]) * rstd[:, None]


def forward(x: Array, residual: Optional[Array], scale: Optional[Array], bias: Optional[Array], *,
            epsilon: float, rms: bool, out_dtype: Any,
            residual_dtype: Any = None) -> tuple[Array, Optional[Array], Array, Array]:
    """Return ``(y, h, mean, rstd)``: ``y`` in ``out_dtype``; ``h`` the new residual (None without one)."""
    cdt = compute_dtype(x.dtype, None if residual is None else residual.dtype)
    h = None
    if residual is not None:
        h = (x.astype(cdt) + residual.astype(cdt)).astype(residual_dtype or residual.dtype)
    s = _shifted((x if h is None else h).astype(cdt), rms)
    if rms:
        mean, d = jnp.zeros(s.shape[:-1], cdt), s
    else:
        mean = jnp.mean(s, axis=-1)
        d = s - mean[:, None]
    rstd = lax.rsqrt(jnp.maximum(jnp.mean(jnp.square(d), axis=-1), 0) + jnp.asarray(epsilon, cdt))
    y = d * rstd[:, None]
    if scale is not None:
        y = y * scale.astype(cdt)
    if bias is not None:
        y = y + bias.astype(cdt)
    return y.astype(out_dtype), h, mean, rstd


def backward(dy: Array, h: Array, mean: Array, rstd: Array, scale: Optional[Array], dh: Optional[Array], *,
             rms: bool, has_bias: bool, dx_dtype: Any) -> tuple[Array, Optional[Array], Optional[Array]]:
    """Return ``(dx, dscale, dbias)`` for :func:`forward`; ``dscale``/``dbias`` in the statistics dtype
    (None when there is no scale / no bias)."""
    cdt = mean.dtype
    xhat = x_hat(h, mean, rstd, rms)
    dyf = dy.astype(cdt)
    g = dyf if scale is None else dyf * scale.astype(cdt)
    inner = g - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True)
    if not rms:
        inner = inner - jnp.mean(g, axis=-1, keepdims=True)
    dx = rstd[:, None] * inner
    if dh is not None:
        dx = dx + dh.astype(cdt)
    dscale = None if scale is None else jnp.sum(dyf * xhat, axis=0)
    dbias = jnp.sum(dyf, axis=0) if has_bias else None
    return dx.astype(dx_dtype), dscale, dbias
