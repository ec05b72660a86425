"""Float64 NumPy references for every norm and its gradients (the ground truth of the numerics tests).

All functions work on 2-D arrays ``(rows, width)`` normalised over the last axis, with per-feature
``scale``/``bias`` of shape ``(width,)``. Inputs are converted to float64 first.
"""
from __future__ import annotations

import numpy as np


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def stats(h: np.ndarray, eps: float, rms: bool):
    """Return (mean, rstd) per row in float64; mean is 0 for RMS norm."""
    h = _f64(h)
    if rms:
        mean = np.zeros(h.shape[:-1])
        var = np.mean(h * h, axis=-1)
    else:
        mean = np.mean(h, axis=-1)
        var = np.mean((h - mean[..., None]) ** 2, axis=-1)
    return mean, 1.0 / np.sqrt(var + eps)


def norm_fwd(x, scale=None, bias=None, *, eps=1e-6, rms=False):
    """y = (x - mean) * rstd * scale + bias (mean = 0 for RMS)."""
    x = _f64(x)
    mean, rstd = stats(x, eps, rms)
    y = (x - mean[..., None]) * rstd[..., None]
    if scale is not None:
        y = y * _f64(scale)
    if bias is not None:
        y = y + _f64(bias)
    return y


def norm_bwd(x, dy, scale=None, *, eps=1e-6, rms=False):
    """Return (dx, dscale, dbias) for y = norm_fwd(x, scale, bias); float64."""
    x, dy = _f64(x), _f64(dy)
    w = x.shape[-1]
    mean, rstd = stats(x, eps, rms)
    xhat = (x - mean[..., None]) * rstd[..., None]
    g = dy * (_f64(scale) if scale is not None else 1.0)
    c1 = np.mean(g * xhat, axis=-1, keepdims=True)
    if rms:
        dx = rstd[..., None] * (g - xhat * c1)
    else:
        c2 = np.mean(g, axis=-1, keepdims=True)
        dx = rstd[..., None] * (g - xhat * c1 - c2)
    dscale = np.sum(dy * xhat, axis=0)
    dbias = np.sum(dy, axis=0)
    del w
    return dx, dscale, dbias


def add_norm_fwd(x, residual, scale=None, bias=None, *, eps=1e-6, rms=False):
    """Return (y, new_residual) with new_residual = x + residual and y = norm(new_residual)."""
    h = _f64(x) + _f64(residual)
    return norm_fwd(h, scale, bias, eps=eps, rms=rms), h


def add_norm_bwd(x, residual, dy, dres, scale=None, *, eps=1e-6, rms=False):
    """Return (dx, dresidual, dscale, dbias); dres is the cotangent of new_residual."""
    h = _f64(x) + _f64(residual)
    dh, dscale, dbias = norm_bwd(h, dy, scale, eps=eps, rms=rms)
    dh = dh + _f64(dres)
    return dh, dh, dscale, dbias


def naive_error(x, scale=None, bias=None, *, eps=1e-6, rms=False, dtype=np.float32):
    """Max abs error of a naive same-dtype computation: the bar low-precision paths are held to."""
    import jax.numpy as jnp

    xd = jnp.asarray(x, dtype)
    mean = jnp.zeros(xd.shape[:-1] + (1,), dtype) if rms else jnp.mean(xd, -1, keepdims=True)
    var = jnp.mean(jnp.square(xd - mean), -1, keepdims=True)
    y = (xd - mean) * (1 / jnp.sqrt(var + jnp.asarray(eps, dtype)))
    if scale is not None:
        y = y * jnp.asarray(scale, dtype)
    if bias is not None:
        y = y + jnp.asarray(bias, dtype)
    ref = norm_fwd(x, scale, bias, eps=eps, rms=rms)
    return float(np.max(np.abs(np.asarray(y, np.float64) - ref)))
