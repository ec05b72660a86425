"""The one ``jax.custom_vjp`` behind every norm, on the 2-D ``(R, W)`` form.

Every backend (``rnlib.ops.norm_xla``, the Pallas ``rnlib.kernels``, the native CPU ``rnlib.kernels.native``)
implements the same ``norm_fwd``/``norm_bwd``; this module saves what the backward needs (the normalised input -- ``x``, or the new residual ``h`` --, and
float32 ``mean``/``rstd``, never low-precision statistics) and routes the cotangents.

Outputs of :func:`norm2d` are ``(y, h)`` or, with ``cfg.with_stats``, ``(y, h, mean, rstd)``, so callers
(the stats-reinjecting LN) can differentiate through the row statistics; their cotangents add::

    dx += dmean / W - drstd * rstd^2 * x_hat / W
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import jax
import jax.numpy as jnp

from rnlib.ops import dispatch, norm_xla


@dataclass(frozen=True)
class NormConfig:
    """Static (hashable) settings of one norm call."""

    epsilon: float
    rms: bool
    out_dtype: Any
    x_dtype: Any
    residual_dtype: Any = None      # dtype of the new residual h (None: no residual)
    residual_in_dtype: Any = None   # dtype of the incoming residual, for its cotangent
    backend: str = "xla"            # "xla" | "pallas" | "native": see rnlib.ops.dispatch
    platform: str = "cpu"
    with_stats: bool = False


def _backend(cfg: NormConfig):
    return dispatch.backend_module(cfg.backend)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def norm2d(cfg: NormConfig, x: jax.Array, residual: Optional[jax.Array], scale: Optional[jax.Array],
           bias: Optional[jax.Array]):
    """Normalise ``x`` (or ``x + residual``) of shape ``(R, W)`` over its last axis; see module docstring."""
    return _fwd(cfg, x, residual, scale, bias, saving=False)[0]


def _fwd(cfg, x, residual, scale, bias, saving=True):
    backend = _backend(cfg)
    # A backend may compile its forward differently when the statistics feed a backward in the same program.
    fwd = getattr(backend, "norm_fwd_for_backward", backend.norm_fwd) if saving else backend.norm_fwd
    y, h, mean, rstd = fwd(
        x, residual, scale, bias, epsilon=cfg.epsilon, rms=cfg.rms, out_dtype=cfg.out_dtype,
        residual_dtype=cfg.residual_dtype, platform=cfg.platform)
    if cfg.with_stats:  # with_stats always runs on the XLA backend (see norms.py)
        saved_in = x if h is None else h
        out = (y, h, mean if cfg.rms else norm_xla.true_mean(saved_in, mean), rstd)
    else:
        out = (y, h)
    bias_proto = None if bias is None else jnp.zeros((0,), bias.dtype)  # keeps bias's dtype, not its data
    return out, (x if h is None else h, mean, rstd, scale, bias_proto)


def _bwd(cfg, saved, cts):
    h, mean, rstd, scale, bias_proto = saved
    dy, dh = cts[0], cts[1]
    cdt = mean.dtype
    two_inputs = cfg.residual_dtype is not None
    # One dx dtype when the caller's cotangents share it; otherwise keep full precision until the casts.
    if cfg.with_stats or (two_inputs and jnp.dtype(cfg.residual_in_dtype) != jnp.dtype(cfg.x_dtype)):
        dx_dtype = cdt
    else:
        dx_dtype = cfg.x_dtype
    dx, dscale, dbias = _backend(cfg).norm_bwd(
        dy, h, mean, rstd, scale, dh, rms=cfg.rms, has_bias=bias_proto is not None, dx_dtype=dx_dtype,
        platform=cfg.platform)
    if cfg.with_stats:
        dmean, drstd = cts[2].astype(cdt), cts[3].astype(cdt)
        width = h.shape[-1]
        xhat = norm_xla.x_hat(h, mean, rstd, cfg.rms)
        dx = dx - (drstd * rstd * rstd / width)[:, None] * xhat
        if not cfg.rms:
            dx = dx + (dmean / width)[:, None]
    dscale = None if scale is None else dscale.astype(scale.dtype)
    dbias = None if bias_proto is None else dbias.astype(bias_proto.dtype)
    dres = dx.astype(cfg.residual_in_dtype) if two_inputs else None
    return dx.astype(cfg.x_dtype), dres, dscale, dbias


norm2d.defvjp(_fwd, _bwd)
