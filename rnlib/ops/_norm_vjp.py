"""The one ``jax.custom_vjp`` behind every norm and every backend, on the 2-D ``(R, W)`` form.

:func:`norm2d` runs the chosen backend's forward, saves what the backward needs (the normalised input -- ``x``,
or the new residual ``h`` -- and float32/64 ``mean``/``rstd``, never low-precision statistics) and routes the
cotangents to the backend's backward.

Second order (``jax.grad`` of a gradient, e.g. gradient penalties) works for every backend: a fused backend's
forward and backward are each wrapped in a ``custom_vjp`` whose derivative is that of the plain maths
(:mod:`rnlib.ops._norm_math`), which compute the same values. Forward mode (``jax.jvp``) does not, as for any
``custom_vjp``.

With ``spec.with_stats`` the outputs are ``(y, h, mean, rstd)`` (true row mean) so that callers can
differentiate through the row statistics; their cotangents add::

    dx += dmean / W - drstd * rstd^2 * x_hat / W
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from rnlib.ops import _norm_math
from rnlib.ops._backends import BACKENDS, NormSpec

Array = jax.Array


def _math_forward(spec: NormSpec, x, residual, scale, bias):
    return BACKENDS["xla"].forward(spec, x, residual, scale, bias)


def _math_backward(spec: NormSpec, dx_dtype, dy, h, mean, rstd, scale, dh):
    return BACKENDS["xla"].backward(spec, dy, h, mean, rstd, scale, dh, dx_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused_forward(spec: NormSpec, name: str, x, residual, scale, bias):
    return BACKENDS[name].forward(spec, x, residual, scale, bias)


def _fused_forward_fwd(spec, name, *args):
    return _fused_forward(spec, name, *args), args


def _fused_forward_bwd(spec, name, args, cts):
    return jax.vjp(functools.partial(_math_forward, spec), *args)[1](cts)


_fused_forward.defvjp(_fused_forward_fwd, _fused_forward_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fused_backward(spec: NormSpec, name: str, dx_dtype, dy, h, mean, rstd, scale, dh):
    return BACKENDS[name].backward(spec, dy, h, mean, rstd, scale, dh, dx_dtype)


def _fused_backward_fwd(spec, name, dx_dtype, *args):
    return _fused_backward(spec, name, dx_dtype, *args), args


def _fused_backward_bwd(spec, name, dx_dtype, args, cts):
    return jax.vjp(functools.partial(_math_backward, spec, dx_dtype), *args)[1](cts)


_fused_backward.defvjp(_fused_backward_fwd, _fused_backward_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def norm2d(spec: NormSpec, backend: str, x: Array, residual: Optional[Array], scale: Optional[Array],
           bias: Optional[Array]):
    """Normalise ``x`` (or ``x + residual``) of shape ``(R, W)`` over its last axis with backend ``backend``.

    Returns ``(y, h)`` (``h`` None without a residual), or ``(y, h, mean, rstd)`` with ``spec.with_stats``.
    """
    return _fwd(spec, backend, x, residual, scale, bias)[0]


def _fwd(spec, backend, x, residual, scale, bias):
    if backend == "xla":
        y, h, mean, rstd = _math_forward(spec, x, residual, scale, bias)
    else:
        y, h, mean, rstd = _fused_forward(spec, backend, x, residual, scale, bias)
    out = (y, h)
    if spec.with_stats:
        out += (mean if spec.rms else _norm_math.true_mean(x if h is None else h, mean), rstd)
    bias_proto = None if bias is None else jnp.zeros((0,), bias.dtype)  # keeps bias's dtype, not its data
    return out, (x if h is None else h, mean, rstd, scale, bias_proto)


def _bwd(spec, backend, saved, cts):
    h, mean, rstd, scale, bias_proto = saved
    dy, dh = cts[0], cts[1]
    cdt = mean.dtype
    two_inputs = spec.residual_in_dtype is not None
    # One dx dtype when the caller's cotangents share it; otherwise keep full precision until the casts.
    if spec.with_stats or (two_inputs and spec.residual_in_dtype != spec.x_dtype):
        dx_dtype = cdt
    else:
        dx_dtype = spec.x_dtype
    if backend == "xla":
        dx, dscale, dbias = _math_backward(spec, dx_dtype, dy, h, mean, rstd, scale, dh)
    else:
        dx, dscale, dbias = _fused_backward(spec, backend, dx_dtype, dy, h, mean, rstd, scale, dh)
    if spec.with_stats:
        dmean, drstd = cts[2].astype(cdt), cts[3].astype(cdt)
        width = h.shape[-1]
        xhat = _norm_math.x_hat(h, mean, rstd, spec.rms)
        dx = dx - (drstd * rstd * rstd / width)[:, None] * xhat
        if not spec.rms:
            dx = dx + (dmean / width)[:, None]
    dscale = None if scale is None else dscale.astype(scale.dtype)
    dbias = None if bias_proto is None else dbias.astype(bias_proto.dtype)
    dres = dx.astype(spec.residual_in_dtype) if two_inputs else None
    return dx.astype(spec.x_dtype), dres, dscale, dbias


norm2d.defvjp(_fwd, _bwd)
