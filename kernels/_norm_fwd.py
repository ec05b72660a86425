"""Forward kernels: layer norm / RMS norm, optionally fused with the residual add.

Maths per row of h (h = x, or h = round(x + residual) for the fused add; statistics use the rounded h):
    s    = h - c,  c = h[:, 0]             (layer norm; s = h, no shift, for RMS)
    mean = sum(s) / W                      (the *saved* mean: of s, not of h; 0 for RMS)
    var  = max(sum((s - mean)^2) / W, 0)   (two passes over the on-chip row, float32; sum(h^2)/W for RMS)
    rstd = rsqrt(var + eps)
    y    = (s - mean) * rstd * scale + bias
The shift is for rows with |mean| >> std (mean 1e4, std 1e-2: a float32 mean of h is off by ~ulp(1e4) ~ 1e-3, 10%
of the std, and so is y). h - c is exact for nearby values (Sterbenz), so the statistics of s keep full precision.
The backward recomputes c = h[:, 0] and x_hat = (s - mean) * rstd: the same convention as rnlib's plain maths (rnlib.ops).

Whole-row path: one kernel, grid over row tiles; c comes from the tile itself. Chunked path (rows wider than one
block): c (one per row) is computed in XLA (every chunk of a row must use the same shift; see _row_shift for the fused
add) and passed in; a statistics kernel writes per-chunk (mean_c, M2_c) of s -- each chunk two-pass on chip -- (and
h for the fused add); a tiny XLA step combines them exactly (Chan et al.: M2 = sum M2_c + sum n_c (mean_c - mean)^2);
an apply kernel writes y.

Transposed plans (TPU, ``plan.transposed``: XLA's default layout of x is column-major) run the same kernels on x.T:
tiles (block_cols, block_rows), a row down the sublanes; ``Tile`` reduces over the right axis (see _backend.Orient).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from . import _backend as backend
from ._backend import Tile
from ._heuristics import Plan
from ._stats import RowValues

F32 = jnp.float32


def _tile(plan: Plan, rows: int, width: int, chunked: bool) -> Tile:
    row0 = pl.program_id(0) * plan.block_rows
    col0 = pl.program_id(1) * plan.block_cols if chunked else 0
    return Tile(plan.flavor, rows, width, row0, col0, plan.block_rows, plan.block_cols,
                rows % plan.block_rows != 0, width % plan.block_cols != 0, plan.transposed)


def _load_h(t: Tile, x_ref, res_ref, h_ref):
    """h as float32; for the fused add, round x + residual to the residual dtype and write it once."""
    if res_ref is None:
        return t.load(x_ref)
    h = (t.load(x_ref) + t.load(res_ref)).astype(h_ref.dtype)
    t.store(h_ref, h)
    return h.astype(F32)


def _shift(t: Tile, h, c_ref, rms: bool):
    """s = h - c (see module docstring): c read from ``c_ref`` (chunked) or column 0 of the whole-row tile."""
    if rms:
        return h
    return h - (t.load_rowvec(c_ref) if c_ref is not None else t.first_col(h))


def _row_stats(t: Tile, s, width: int, rms: bool):
    """(mean, var) of each row of s, (block_rows, 1) float32, two-pass over the masked tile."""
    if rms:
        return None, t.row_sum(t.where(s * s)) / width
    mean = t.row_sum(t.where(s)) / width
    d = t.where(s - mean)
    return mean, t.row_sum(d * d) / width


def _fwd_kernel(*refs, plan: Plan, rows: int, width: int, eps: float, rms: bool, has_res: bool,
                has_scale: bool, has_bias: bool, stats_given: bool, chunked: bool):
    it = iter(refs)
    x_ref = next(it)
    res_ref = next(it) if has_res else None
    scale_ref = next(it) if has_scale else None
    bias_ref = next(it) if has_bias else None
    c_in = next(it) if stats_given and not rms else None
    mean_in = next(it) if stats_given and not rms else None
    rstd_in = next(it) if stats_given else None
    y_ref = next(it)
    h_ref = next(it) if has_res else None
    mean_ref = next(it) if not stats_given and not rms else None
    rstd_ref = next(it) if not stats_given else None

    t = _tile(plan, rows, width, chunked)
    s = _shift(t, _load_h(t, x_ref, res_ref, h_ref), c_in, rms)
    if stats_given:
        mean = None if rms else t.load_rowvec(mean_in)
        rstd = t.load_rowvec(rstd_in)
    else:
        mean, var = _row_stats(t, s, width, rms)
        rstd = lax.rsqrt(jnp.maximum(var, 0.0) + eps)
        if mean_ref is not None:
            t.store_rowvec(mean_ref, mean)
        t.store_rowvec(rstd_ref, rstd)
    y = (s if rms else s - mean) * rstd
    if has_scale:
        y = y * t.load_colvec(scale_ref)
    if has_bias:
        y = y + t.load_colvec(bias_ref)
    t.store(y_ref, y)


def _chunk_stats_kernel(*refs, plan: Plan, rows: int, width: int, rms: bool, has_res: bool):
    """Per (row tile, chunk): chunk mean of s = h - c and M2 about it (layer norm) or sum of squares (RMS)."""
    it = iter(refs)
    x_ref = next(it)
    res_ref = next(it) if has_res else None
    c_ref = None if rms else next(it)
    h_ref = next(it) if has_res else None
    mean_ref = None if rms else next(it)
    m2_ref = next(it)

    t = _tile(plan, rows, width, True)
    s = _shift(t, _load_h(t, x_ref, res_ref, h_ref), c_ref, rms)
    if rms:
        t.store_rowvec(m2_ref, t.row_sum(t.where(s * s)))
        return
    n = jnp.minimum(width - pl.program_id(1) * plan.block_cols, plan.block_cols).astype(F32)
    mean = t.row_sum(t.where(s)) / n
    d = t.where(s - mean)
    t.store_rowvec(mean_ref, mean)
    t.store_rowvec(m2_ref, t.row_sum(d * d))


def _specs(plan: Plan, rows: int, chunked: bool):
    """BlockSpecs for a (rows, W) tile and a (1, W) parameter row (both swapped when transposed); the per-row
    values and chunk partials."""
    br, bc, o = plan.block_rows, plan.block_cols, backend.Orient(plan.transposed)
    stat = RowValues(plan.flavor, rows, br)
    if chunked:
        part = RowValues(plan.flavor, rows, br, lead=(plan.n_chunks,))
        return (o.tile(br, bc, lambda i, j: (i, j)), o.param_spec(bc, lambda i, j: j),
                stat, stat.spec(lambda i, j: i), part, part.spec(lambda i, j: i, lambda i, j: (j,)))
    return (o.tile(br, bc, lambda i: (i, 0)), o.param_spec(bc, lambda i: 0),
            stat, stat.spec(lambda i: i), None, None)


def norm_fwd_impl(x, residual, scale, bias, *, epsilon: float, rms: bool, out_dtype, residual_dtype,
                  platform: str, plan: Plan):
    rows, width = x.shape
    n = rows * width  # flops below: per element, counted from the kernel bodies
    has_res, has_scale, has_bias = residual is not None, scale is not None, bias is not None
    chunked = plan.chunked
    grid = (pl.cdiv(rows, plan.block_rows),) + ((plan.n_chunks,) if chunked else ())
    kw = backend.call_kwargs(platform, plan.num_warps, len(grid))
    tile, param, stats, stat, parts, part = _specs(plan, rows, chunked)
    o = backend.Orient(plan.transposed)  # transposed: x.T in, y.T / h.T out (bitcasts of column-major arrays)
    big = o.shape(rows, width)
    params = [o.param(p, width) for p in (scale, bias) if p is not None]
    h_dtype = jnp.dtype(residual_dtype if residual_dtype is not None else x.dtype)

    h = None
    if chunked:  # pass 1: per-chunk statistics (and the new residual)
        n_stats = 1 if rms else 2
        c = [] if rms else [_row_shift(x, residual)]
        outs = backend.pallas_call(
            functools.partial(_chunk_stats_kernel, plan=plan, rows=rows, width=width, rms=rms, has_res=has_res),
            grid=grid,
            in_specs=[tile] * (1 + has_res) + [stat] * len(c),
            out_specs=[tile] * has_res + [part] * n_stats,
            out_shape=[jax.ShapeDtypeStruct(big, h_dtype)] * has_res + [parts.struct()] * n_stats,
            name="rn_norm_fwd_stats", flops=(6 + has_res) * n, **kw,
        )(o.arr(x), *([o.arr(residual)] if has_res else []), *[stats.pack(v) for v in c])
        if has_res:
            h, *outs = outs
            h = o.arr(h)
        mean, rstd = _combine_chunk_stats([parts.unpack(o) for o in outs], width, plan, epsilon, rms)
        if has_res and not rms:  # re-anchor on h[:, 0] as written, the shift the backward recomputes from h
            c_h = h[:, 0].astype(F32)
            mean, c = mean + (c[0] - c_h), [c_h]  # a difference of nearby floats: exact (Sterbenz)
        stats_in = [stats.pack(v) for v in c + ([] if rms else [mean]) + [rstd]]
        y = backend.pallas_call(
            functools.partial(_fwd_kernel, plan=plan, rows=rows, width=width, eps=epsilon, rms=rms, has_res=False,
                              has_scale=has_scale, has_bias=has_bias, stats_given=True, chunked=True),
            grid=grid,
            in_specs=[tile] + [param] * len(params) + [stat] * len(stats_in),
            out_specs=tile,
            out_shape=jax.ShapeDtypeStruct(big, out_dtype),
            name="rn_norm_fwd_apply", flops=4 * n, **kw,
        )(o.arr(h if has_res else x), *params, *stats_in)
        return o.arr(y), h, (jnp.zeros((rows,), F32) if rms else mean), rstd

    out_shape = [jax.ShapeDtypeStruct(big, out_dtype)]
    out_specs = [tile]
    if has_res:
        out_shape.append(jax.ShapeDtypeStruct(big, h_dtype))
        out_specs.append(tile)
    n_stats = 1 if rms else 2
    out_shape += [stats.struct()] * n_stats
    out_specs += [stat] * n_stats
    outs = backend.pallas_call(
        functools.partial(_fwd_kernel, plan=plan, rows=rows, width=width, eps=epsilon, rms=rms, has_res=has_res,
                          has_scale=has_scale, has_bias=has_bias, stats_given=False, chunked=False),
        grid=grid,
        in_specs=[tile] * (1 + has_res) + [param] * len(params),
        out_specs=out_specs,
        out_shape=out_shape,
        name="rn_norm_fwd", flops=(10 + has_res) * n, transcendentals=rows, **kw,
    )(o.arr(x), *([o.arr(residual)] if has_res else []), *params)
    y, *outs = outs
    y = o.arr(y)
    if has_res:
        h, *outs = outs
        h = o.arr(h)
    mean = jnp.zeros((rows,), F32) if rms else stats.unpack(outs[0])
    return y, h, mean, stats.unpack(outs[-1])


def _row_shift(x, residual):
    """(rows,) float32 shift for the chunked statistics: h[:, 0] without a residual; x[:, 0] + residual[:, 0]
    (unrounded) for the fused add, re-anchored on the written h[:, 0] afterwards. Reproducing h's rounding here
    would be fragile: XLA may drop a float32 -> bf16 -> float32 round trip (xla_allow_excess_precision)."""
    c = x[:, 0].astype(F32)
    return c if residual is None else c + residual[:, 0].astype(F32)


def _combine_chunk_stats(parts, width: int, plan: Plan, eps: float, rms: bool):
    """Exact merge of per-chunk statistics into per-row (mean, rstd); fixed order, so deterministic."""
    if rms:
        var = jnp.sum(parts[0], axis=0) / width
        return None, lax.rsqrt(jnp.maximum(var, 0.0) + eps)
    cmean, m2 = parts  # (n_chunks, rows)
    n = np.minimum(width - np.arange(plan.n_chunks) * plan.block_cols, plan.block_cols).astype(np.float32)
    n = jnp.asarray(n)[:, None]
    mean = jnp.sum(n * cmean, axis=0) / width
    var = (jnp.sum(m2, axis=0) + jnp.sum(n * jnp.square(cmean - mean), axis=0)) / width
    return mean, lax.rsqrt(jnp.maximum(var, 0.0) + eps)
