"""Pure-jnp maths of the native kernels, used only to differentiate through them (grad-of-grad).

The same formulas, dtypes and shifted-mean convention as ``rnlib.ops.norm_xla`` (which kernels may not import):
2-D ``(R, W)`` arrays, float32 statistics, layer-norm rows shifted by ``c = h[:, 0]``, saved ``mean`` = the mean
of ``h - c`` (zeros for RMS), ``x_hat = ((h - c) - mean) * rstd``. Keep the two in step.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

F32 = jnp.float32


def x_hat(h, mean, rstd, rms: bool):
    hf = h.astype(F32)
    return ((hf if rms else hf - hf[:, :1]) - mean[:, None]) * rstd[:, None]


def norm_fwd(x, residual, scale, bias, *, epsilon, rms, out_dtype, residual_dtype):
    h, hf = None, x.astype(F32)
    if residual is not None:
        h = (hf + residual.astype(F32)).astype(residual_dtype)
        hf = h.astype(F32)
    s = hf if rms else hf - hf[:, :1]
    mean = jnp.zeros(hf.shape[:-1], F32) if rms else jnp.mean(s, axis=-1)
    d = s if rms else s - mean[:, None]
    rstd = lax.rsqrt(jnp.maximum(jnp.mean(jnp.square(d), axis=-1), 0) + jnp.asarray(epsilon, F32))
    y = d * rstd[:, None]
    y = y if scale is None else y * scale.astype(F32)
    y = y if bias is None else y + bias.astype(F32)
    return y.astype(out_dtype), h, mean, rstd


def norm_bwd(dy, h, mean, rstd, scale, dh_extra, *, rms, has_bias, dx_dtype):
    dyf, xh = dy.astype(F32), x_hat(h, mean, rstd, rms)
    dscale = None if scale is None else jnp.sum(dyf * xh, axis=0)
    dbias = jnp.sum(dyf, axis=0) if has_bias else None
    g = dyf if scale is None else dyf * scale.astype(F32)
    inner = g - xh * jnp.mean(g * xh, axis=-1, keepdims=True)
    inner = inner if rms else inner - jnp.mean(g, axis=-1, keepdims=True)
    dx = rstd[:, None] * inner
    dx = dx if dh_extra is None else dx + dh_extra.astype(F32)
    return dx.astype(dx_dtype), dscale, dbias
