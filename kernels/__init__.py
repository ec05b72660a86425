"""Pallas norm kernels for rnlib, installed as ``rnlib.kernels``.

Imports jax only (never Flax, never rnlib.ops): rnlib.ops owns the custom_vjp, validation and dispatch and calls
the three functions below on the canonical 2-D form ``(rows, width)`` (normalised over the last axis).

``platform`` is one of ``"gpu"`` (Triton backend; ``"cuda"``/``"rocm"`` accepted), ``"tpu"`` (Mosaic),
``"cpu"`` (the GPU kernels in Pallas interpret mode) or ``"tpu_interpret"`` (the TPU kernels under
``pltpu.InterpretParams()``, for tests on CPU). :func:`cuda_lowering` lowers the GPU kernels on a host without a GPU.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._backend import PLATFORMS, canonical_platform, cuda_lowering, flavor, tpu_column_major, tpu_generation
from ._heuristics import Plan, make_plan, tpu_transposed_pays
from ._norm_bwd import norm_bwd_impl
from ._norm_fwd import norm_fwd_impl

__all__ = ["norm_fwd", "norm_bwd", "supports", "plan_for", "tpu_generation", "cuda_lowering", "PLATFORMS", "Plan"]

_DTYPES = (np.dtype(np.float32), np.dtype(jnp.bfloat16), np.dtype(np.float16))
_MAX_ROWS = 2**31 - 1  # row indices are int32 inside the kernels (element offsets are not: see backend.Tile)


def supports(rows: int, width: int, dtype, platform: str) -> bool:
    """Whether the kernels handle a (rows, width) ``dtype`` problem on ``platform`` (any width >= 1).

    float16 on "tpu" is not served: Mosaic rejects float16 vector loads on v5e, v6e and v5p ("Invalid vector type
    for load", libtpu 0.0.42-0.0.50), so those calls go to XLA ("tpu_interpret" still runs them, for the tests).
    """
    try:
        p = canonical_platform(platform)
    except ValueError:
        return False
    if p == "tpu" and np.dtype(dtype) == np.float16:
        return False
    return (np.dtype(dtype) in _DTYPES and 1 <= int(rows) <= _MAX_ROWS and 1 <= int(width) <= _MAX_ROWS)


def plan_for(rows: int, width: int, dtype, platform: str, generation: str | None = None,
             transposed: bool | None = None) -> Plan:
    """The tiling the kernels use for this problem (from the tables in :mod:`rnlib.kernels._heuristics`).

    TPU tiles are sized for the generation's scoped VMEM: ``generation`` ("v5e", "v6e", "v5p") defaults to the
    chip being traced for (:func:`tpu_generation`; the smallest budget when unknown, e.g. "tpu_interpret").
    ``transposed`` (TPU): the kernels take x.T; by default when XLA's default layout of a (rows, width) array
    is column-major on the device being traced for (:func:`rnlib.kernels._backend.tpu_column_major`), so that
    no layout copy surrounds them at a jit boundary, and the transposed plan pays for itself
    (:func:`rnlib.kernels._heuristics.tpu_transposed_pays`: not for small row counts, nor multi-pass for arrays
    that fit VMEM).
    """
    fl = flavor(platform)
    if fl == "tpu" and generation is None:
        generation = tpu_generation()
    if transposed is None:
        transposed = (canonical_platform(platform) == "tpu" and tpu_column_major(rows, width, dtype)
                      and tpu_transposed_pays(rows, width, np.dtype(dtype).itemsize, generation))
    return make_plan(rows, width, dtype, fl, generation, bool(transposed) and fl == "tpu")


def norm_fwd(x: jax.Array, residual: jax.Array | None, scale: jax.Array | None, bias: jax.Array | None, *,
             epsilon: float, rms: bool, out_dtype, residual_dtype, platform: str):
    """Layer/RMS norm forward, optionally fused with the residual add.

    Args: x (R, W) f32/bf16/f16; residual (R, W) or None; scale, bias (W,) (float32) or None.
    Returns (y, h, mean, rstd): y (R, W) out_dtype; h = round_{residual_dtype}(x + residual) (R, W) or None when
    residual is None; mean (R,) float32; rstd (R,) float32 = rsqrt(var + epsilon).
    Statistics are over h as stored (rounded) when residual is given, else over x (call either h below).

    Arguments are validated by the caller (``rnlib.ops``); only what the kernels cannot serve is refused here.
    The saved ``mean`` is *shifted*, as in rnlib's plain maths (rnlib.ops): for layer norm it is the mean of ``h - h[:, 0]``
    (the row mean is ``h[:, 0] + mean``), so that rows with |mean| >> std (mean 1e4, std 1e-2) keep float32
    precision; zeros for RMS (no shift). It is meant only for :func:`norm_bwd` of this backend.
    """
    rows, width = x.shape
    if not supports(rows, width, x.dtype, platform):
        raise ValueError(f"unsupported norm problem: x {x.shape} {x.dtype} on platform {platform!r}")
    if residual is not None and residual_dtype is None:
        residual_dtype = residual.dtype
    plan = plan_for(rows, width, x.dtype, platform)
    return norm_fwd_impl(x, residual, scale, bias, epsilon=float(epsilon), rms=bool(rms),
                         out_dtype=jnp.dtype(out_dtype if out_dtype is not None else x.dtype),
                         residual_dtype=residual_dtype, platform=platform, plan=plan)


def norm_bwd(dy: jax.Array, h: jax.Array, mean: jax.Array, rstd: jax.Array, scale: jax.Array | None,
             dh_extra: jax.Array | None, *, rms: bool, has_bias: bool, dx_dtype, platform: str):
    """Backward of :func:`norm_fwd` given its saved (h, mean, rstd).

    Args: dy (R, W); h (R, W) (x, or the new residual); mean, rstd (R,) float32 as returned by :func:`norm_fwd`
    (mean shifted by h[:, 0] for layer norm: x_hat = ((h - h[:, 0]) - mean) * rstd); scale (W,) or None;
    dh_extra (R, W) or None: cotangent of the new residual, added into dx.
    Returns (dx (R, W) dx_dtype, dscale (W,) f32 or None if scale is None, dbias (W,) f32 or None if not has_bias).
    """
    rows, width = h.shape
    if not supports(rows, width, h.dtype, platform):
        raise ValueError(f"unsupported norm problem: h {h.shape} {h.dtype} on platform {platform!r}")
    plan = plan_for(rows, width, h.dtype, platform)
    if mean is None:
        mean = jnp.zeros((rows,), jnp.float32)
    return norm_bwd_impl(dy, h, mean, rstd, scale, dh_extra, rms=bool(rms), has_bias=bool(has_bias),
                         dx_dtype=jnp.dtype(dx_dtype if dx_dtype is not None else h.dtype), platform=platform,
                         plan=plan)
