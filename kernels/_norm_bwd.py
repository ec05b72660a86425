"""Backward kernels: dx (plus the residual-stream cotangent) and deterministic dscale/dbias.

With xhat = ((h - c) - mean) * rstd and g = dy * scale, per row (c = h[:, 0] and mean the saved mean of h - c, see
norm_fwd; c = mean = 0 for RMS):
    c1 = sum(g * xhat) / W,   c2 = sum(g) / W   (c2 = 0 for RMS)
    dx = rstd * (g - xhat * c1 - c2) + dh_extra
    dscale = sum_rows dy * xhat,   dbias = sum_rows dy
Every backward program loops over ``plan.bwd_sub_blocks`` row tiles and writes one float32 partial row of
dscale/dbias; a fixed-order sum over programs finishes them (no atomics: same bits every run).
Chunked path: a first kernel writes per-chunk partial c1/c2 sums, XLA adds them, the dx kernel reads them; c comes
from XLA as a (rows, 1) input there (a chunk past the first does not hold column 0), from the tile otherwise.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from . import _backend as backend
from ._backend import SQUEEZED, Tile
from ._heuristics import Plan

F32 = jnp.float32


def _load_xhat(t: Tile, idx, h_ref, mean_ref, rstd_ref, c_ref, rms: bool):
    rstd = t.load_rowvec(rstd_ref, idx)
    h = t.load(h_ref, idx)
    if rms:
        return t.where(h * rstd), rstd
    c = t.load_rowvec(c_ref, idx) if c_ref is not None else t.first_col(h)
    return t.where(((h - c) - t.load_rowvec(mean_ref, idx)) * rstd), rstd


def _bwd_kernel(*refs, plan: Plan, rows: int, width: int, rms: bool, has_scale: bool, has_bias: bool,
                has_extra: bool, c_given: bool, chunked: bool):
    it = iter(refs)
    dy_ref, h_ref = next(it), next(it)
    mean_ref = None if rms else next(it)
    rstd_ref = next(it)
    shift_ref = next(it) if chunked and not rms else None
    scale_ref = next(it) if has_scale else None
    extra_ref = next(it) if has_extra else None
    c1_ref = next(it) if c_given else None
    c2_ref = next(it) if c_given and not rms else None
    dx_ref = next(it)
    dscale_ref = next(it) if has_scale else None
    dbias_ref = next(it) if has_bias else None

    br, bc, sub = plan.block_rows, plan.block_cols, plan.bwd_sub_blocks
    col0 = pl.program_id(1) * bc if chunked else 0
    prog_row0 = pl.program_id(0) * (br * sub)
    check_rows, check_cols = rows % (br * sub) != 0, width % bc != 0

    def tile_at(s):
        return Tile(plan.flavor, rows, width, prog_row0 + s * br, col0, br, bc, check_rows, check_cols)

    t0 = tile_at(0)
    scale = t0.load_colvec(scale_ref) if has_scale else None

    def body(s, acc):
        t = tile_at(s)
        idx = ... if sub == 1 else (pl.ds(s * br, br), slice(None))
        xhat, rstd = _load_xhat(t, idx, h_ref, mean_ref, rstd_ref, shift_ref, rms)
        dy = t.where(t.load(dy_ref, idx))
        g = t.where(dy * scale) if has_scale else dy
        if c_given:
            c1 = t.load_rowvec(c1_ref, idx)
            c2 = None if rms else t.load_rowvec(c2_ref, idx)
        else:
            c1 = jnp.sum(g * xhat, axis=1, keepdims=True) / width
            c2 = None if rms else jnp.sum(g, axis=1, keepdims=True) / width
        dx = g - xhat * c1
        if not rms:
            dx = dx - c2
        dx = dx * rstd
        if has_extra:
            dx = dx + t.load(extra_ref, idx)
        t.store(dx_ref, dx, idx)
        ds, db = acc
        if has_scale:
            ds = ds + jnp.sum(dy * xhat, axis=0, keepdims=True)
        if has_bias:
            db = db + jnp.sum(dy, axis=0, keepdims=True)
        return ds, db

    zero = jnp.zeros((1, bc), F32)
    if sub == 1:
        ds, db = body(0, (zero, zero))
    else:
        ds, db = lax.fori_loop(0, sub, body, (zero, zero))
    if has_scale:
        t0.store_colvec(dscale_ref, ds)
    if has_bias:
        t0.store_colvec(dbias_ref, db)


def _chunk_c_kernel(*refs, plan: Plan, rows: int, width: int, rms: bool, has_scale: bool):
    """Per (row tile, chunk) partial sums of g * xhat and g."""
    it = iter(refs)
    dy_ref, h_ref = next(it), next(it)
    mean_ref = None if rms else next(it)
    rstd_ref = next(it)
    shift_ref = None if rms else next(it)
    scale_ref = next(it) if has_scale else None
    c1_ref = next(it)
    c2_ref = None if rms else next(it)

    t = Tile(plan.flavor, rows, width, pl.program_id(0) * plan.block_rows, pl.program_id(1) * plan.block_cols,
             plan.block_rows, plan.block_cols, rows % plan.block_rows != 0, width % plan.block_cols != 0)
    xhat, _ = _load_xhat(t, ..., h_ref, mean_ref, rstd_ref, shift_ref, rms)
    g = t.where(t.load(dy_ref))
    if has_scale:
        g = t.where(g * t.load_colvec(scale_ref))
    t.store_rowvec(c1_ref, jnp.sum(g * xhat, axis=1, keepdims=True))
    if not rms:
        t.store_rowvec(c2_ref, jnp.sum(g, axis=1, keepdims=True))


def norm_bwd_impl(dy, h, mean, rstd, scale, dh_extra, *, rms: bool, has_bias: bool, dx_dtype, platform: str,
                  plan: Plan):
    plan = plan.backward
    rows, width = h.shape
    has_scale, has_extra, chunked = scale is not None, dh_extra is not None, plan.chunked
    br, bc = plan.block_rows, plan.block_cols
    stats = ([] if rms else [mean.reshape(rows, 1).astype(F32)]) + [rstd.reshape(rows, 1).astype(F32)]
    if chunked and not rms:  # the layer-norm shift c = h[:, 0], one value per row for all its chunks
        stats.append(h[:, :1].astype(F32))
    params = [scale.astype(F32).reshape(1, width)] if has_scale else []

    c_in = []
    if chunked:  # pass 1: c1/c2 partial sums per chunk
        grid1 = (pl.cdiv(rows, br), plan.n_chunks)
        part = pl.BlockSpec((SQUEEZED, br, 1), lambda i, j: (j, i, 0))
        n_c = 1 if rms else 2
        parts = backend.pallas_call(
            functools.partial(_chunk_c_kernel, plan=plan, rows=rows, width=width, rms=rms, has_scale=has_scale),
            grid=grid1,
            in_specs=[pl.BlockSpec((br, bc), lambda i, j: (i, j))] * 2
            + [pl.BlockSpec((br, 1), lambda i, j: (i, 0))] * len(stats)
            + [pl.BlockSpec((1, bc), lambda i, j: (0, j))] * len(params),
            out_specs=[part] * n_c,
            out_shape=[jax.ShapeDtypeStruct((plan.n_chunks, rows, 1), F32)] * n_c,
            name="rn_norm_bwd_sums", flops=8 * rows * width, **backend.call_kwargs(platform, plan.num_warps, 2),
        )(dy, h, *stats, *params)
        c_in = [jnp.sum(p, axis=0) / width for p in parts]  # fixed-order sums over chunks: (rows, 1)

    rows_per_prog = br * plan.bwd_sub_blocks
    n_prog = pl.cdiv(rows, rows_per_prog)
    if chunked:
        grid = (n_prog, plan.n_chunks)
        tile = pl.BlockSpec((rows_per_prog, bc), lambda i, j: (i, j))
        stat = pl.BlockSpec((rows_per_prog, 1), lambda i, j: (i, 0))
        param = pl.BlockSpec((1, bc), lambda i, j: (0, j))
        part = pl.BlockSpec((SQUEEZED, 1, bc), lambda i, j: (i, 0, j))
    else:
        grid = (n_prog,)
        tile = pl.BlockSpec((rows_per_prog, bc), lambda i: (i, 0))
        stat = pl.BlockSpec((rows_per_prog, 1), lambda i: (i, 0))
        param = pl.BlockSpec((1, bc), lambda i: (0, 0))
        part = pl.BlockSpec((SQUEEZED, 1, bc), lambda i: (i, 0, 0))
    n_parts = has_scale + has_bias
    outs = backend.pallas_call(
        functools.partial(_bwd_kernel, plan=plan, rows=rows, width=width, rms=rms, has_scale=has_scale,
                          has_bias=has_bias, has_extra=has_extra, c_given=chunked, chunked=chunked),
        grid=grid,
        in_specs=[tile] * 2 + [stat] * len(stats) + [param] * len(params) + [tile] * has_extra
        + [stat] * len(c_in),
        out_specs=[tile] + [part] * n_parts,
        out_shape=[jax.ShapeDtypeStruct((rows, width), dx_dtype)]
        + [jax.ShapeDtypeStruct((n_prog, 1, width), F32)] * n_parts,
        name="rn_norm_bwd", flops=(12 + has_extra) * rows * width, **backend.call_kwargs(platform, plan.num_warps, len(grid)),
    )(dy, h, *stats, *params, *([dh_extra] if has_extra else []), *c_in)
    dx, *parts = outs
    # Small fixed-order reduction of the per-program partials.
    finished = [jnp.sum(p, axis=0).reshape(width) for p in parts]
    dscale = finished.pop(0) if has_scale else None
    dbias = finished.pop(0) if has_bias else None
    return dx, dscale, dbias
