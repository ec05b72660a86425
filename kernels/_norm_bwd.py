"""Backward kernels: dx (plus the residual-stream cotangent) and deterministic dscale/dbias.

With xhat = ((h - c) - mean) * rstd and g = dy * scale, per row (c = h[:, 0] and mean the saved mean of h - c, see
norm_fwd; c = mean = 0 for RMS):
    c1 = sum(g * xhat) / W,   c2 = sum(g) / W   (c2 = 0 for RMS)
    dx = rstd * (g - xhat * c1 - c2) + dh_extra
    dscale = sum_rows dy * xhat,   dbias = sum_rows dy
``plan.bwd_sub_blocks`` row tiles share one float32 partial row of dscale/dbias -- GPU: one program loops over
them; TPU: a ("parallel", "arbitrary") grid, the partial a resident output block accumulated over the arbitrary
dimension -- and a fixed-order sum over the partials finishes them (no atomics: same bits every run).
Chunked path: a first kernel writes per-chunk partial c1/c2 sums, XLA adds them, the dx kernel reads them; c comes
from XLA as a (rows, 1) input there (a chunk past the first does not hold column 0), from the tile otherwise.
Transposed plans (TPU) run the same kernels on dy.T, h.T (see _norm_fwd); their dscale/dbias partials are turned
into lane vectors in the kernel, so they cost what they cost row-major.
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
from ._stats import RowValues

F32 = jnp.float32


def _load_xhat(t: Tile, idx, h_ref, mean_ref, rstd_ref, c_ref, rms: bool):
    rstd = t.load_rowvec(rstd_ref, idx)
    h = t.load(h_ref, idx)
    if rms:
        return t.where(h * rstd), rstd
    c = t.load_rowvec(c_ref, idx) if c_ref is not None else t.first_col(h)
    return t.where(((h - c) - t.load_rowvec(mean_ref, idx)) * rstd), rstd


def _bwd_kernel(*refs, plan: Plan, rows: int, width: int, rms: bool, has_scale: bool, has_bias: bool,
                has_extra: bool, c_given: bool, chunked: bool, n_tiles: int):
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
    tpu = plan.flavor == "tpu"
    if tpu:  # grid (slice, [chunk,] tile of the slice): one row tile per step, partials accumulated over steps
        k = pl.program_id(2 if chunked else 1)
        tile = pl.program_id(0) * sub + k
        prog_row0 = jnp.minimum(tile, n_tiles - 1) * br  # steps past the last tile redo it (see _tpu_grid)
        check_rows, sub = rows % br != 0, 1
    else:
        prog_row0 = pl.program_id(0) * (br * sub)
        check_rows = rows % (br * sub) != 0
    check_cols = width % bc != 0

    def tile_at(s):
        return Tile(plan.flavor, rows, width, prog_row0 + s * br, col0, br, bc, check_rows, check_cols,
                    plan.transposed)

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
            c1 = t.row_sum(g * xhat) / width
            c2 = None if rms else t.row_sum(g) / width
        dx = g - xhat * c1
        if not rms:
            dx = dx - c2
        dx = dx * rstd
        if has_extra:
            dx = dx + t.load(extra_ref, idx)
        t.store(dx_ref, dx, idx)
        ds, db = acc
        if has_scale:
            ds = ds + t.col_sum(dy * xhat)
        if has_bias:
            db = db + t.col_sum(dy)
        return ds, db

    zero = backend.Orient(plan.transposed).col_zeros(bc)
    if sub == 1:
        ds, db = body(0, (zero, zero))
    else:
        ds, db = lax.fori_loop(0, sub, body, (zero, zero))
    for ref, val in ((dscale_ref, ds), (dbias_ref, db)):
        if ref is None:
            continue
        val = t0.col_lanes(val)
        if tpu and plan.bwd_sub_blocks > 1:  # resident block: first step of the slice starts it, others add
            val = jnp.where(tile < n_tiles, val, 0.0) + jnp.where(k == 0, 0.0, ref[...])
        t0.store_colvec(ref, val)


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
             plan.block_rows, plan.block_cols, rows % plan.block_rows != 0, width % plan.block_cols != 0,
             plan.transposed)
    xhat, _ = _load_xhat(t, ..., h_ref, mean_ref, rstd_ref, shift_ref, rms)
    g = t.where(t.load(dy_ref))
    if has_scale:
        g = t.where(g * t.load_colvec(scale_ref))
    t.store_rowvec(c1_ref, t.row_sum(g * xhat))
    if not rms:
        t.store_rowvec(c2_ref, t.row_sum(g))


def _tpu_grid(n_tiles: int, sub: int):
    """TPU backward: (slices, tiles per slice) covering ``n_tiles`` row tiles, and the row tile of step (p, k).

    The last slice may have steps past the last tile (when ``sub`` does not divide ``n_tiles``): they map to the
    last tile again -- its blocks stay resident, dx is rewritten with the same values -- and add nothing to the
    partials.
    """
    n_par = pl.cdiv(n_tiles, sub)
    return n_par, lambda p, k: jnp.minimum(p * sub + k, n_tiles - 1)


def norm_bwd_impl(dy, h, mean, rstd, scale, dh_extra, *, rms: bool, has_bias: bool, dx_dtype, platform: str,
                  plan: Plan):
    plan = plan.backward
    rows, width = h.shape
    has_scale, has_extra, chunked = scale is not None, dh_extra is not None, plan.chunked
    br, bc, sub = plan.block_rows, plan.block_cols, plan.bwd_sub_blocks
    tpu = plan.flavor == "tpu"
    row_vals = [] if rms else [mean]
    row_vals.append(rstd)
    if chunked and not rms:  # the layer-norm shift c = h[:, 0], one value per row for all its chunks
        row_vals.append(h[:, 0])
    o = backend.Orient(plan.transposed)  # transposed: dy.T, h.T (, dh_extra.T) in, dx.T out
    params = [o.param(scale, width)] if has_scale else []

    c_in = []
    if chunked:  # pass 1: c1/c2 partial sums per chunk
        grid1 = (pl.cdiv(rows, br), plan.n_chunks)
        vals1 = RowValues(plan.flavor, rows, br)
        parts1 = RowValues(plan.flavor, rows, br, lead=(plan.n_chunks,))
        n_c = 1 if rms else 2
        parts = backend.pallas_call(
            functools.partial(_chunk_c_kernel, plan=plan, rows=rows, width=width, rms=rms, has_scale=has_scale),
            grid=grid1,
            in_specs=[o.tile(br, bc, lambda i, j: (i, j))] * 2
            + [vals1.spec(lambda i, j: i)] * len(row_vals)
            + [o.param_spec(bc, lambda i, j: j)] * len(params),
            out_specs=[parts1.spec(lambda i, j: i, lambda i, j: (j,))] * n_c,
            out_shape=[parts1.struct()] * n_c,
            name="rn_norm_bwd_sums", flops=8 * rows * width, **backend.call_kwargs(platform, plan.num_warps, 2),
        )(o.arr(dy), o.arr(h), *[vals1.pack(v) for v in row_vals], *params)
        c_in = [jnp.sum(parts1.unpack(p), axis=0) / width for p in parts]  # fixed-order sums over chunks

    if tpu:
        n_tiles = pl.cdiv(rows, br)
        n_prog, tile_of = _tpu_grid(n_tiles, sub)
        vals = RowValues(plan.flavor, rows, br)
        if chunked:
            grid = (n_prog, plan.n_chunks, sub)
            dims = ("parallel", "parallel", "arbitrary")
            tile = o.tile(br, bc, lambda p, j, k: (tile_of(p, k), j))
            stat = vals.spec(lambda p, j, k: tile_of(p, k))
            param = o.param_spec(bc, lambda p, j, k: j)
            part = pl.BlockSpec((SQUEEZED, 1, bc), lambda p, j, k: (p, 0, j))
        else:
            grid = (n_prog, sub)
            dims = ("parallel", "arbitrary")
            tile = o.tile(br, bc, lambda p, k: (tile_of(p, k), 0))
            stat = vals.spec(lambda p, k: tile_of(p, k))
            param = o.param_spec(bc, lambda p, k: 0)
            part = pl.BlockSpec((SQUEEZED, 1, bc), lambda p, k: (p, 0, 0))
    else:
        rows_per_prog = br * sub
        n_prog = n_tiles = pl.cdiv(rows, rows_per_prog)
        vals = RowValues(plan.flavor, rows, rows_per_prog)
        if chunked:
            grid = (n_prog, plan.n_chunks)
            tile = pl.BlockSpec((rows_per_prog, bc), lambda i, j: (i, j))
            stat = vals.spec(lambda i, j: i)
            param = pl.BlockSpec((1, bc), lambda i, j: (0, j))
            part = pl.BlockSpec((SQUEEZED, 1, bc), lambda i, j: (i, 0, j))
        else:
            grid = (n_prog,)
            tile = pl.BlockSpec((rows_per_prog, bc), lambda i: (i, 0))
            stat = vals.spec(lambda i: i)
            param = pl.BlockSpec((1, bc), lambda i: (0, 0))
            part = pl.BlockSpec((SQUEEZED, 1, bc), lambda i: (i, 0, 0))
        dims = len(grid)
    n_parts = has_scale + has_bias
    outs = backend.pallas_call(
        functools.partial(_bwd_kernel, plan=plan, rows=rows, width=width, rms=rms, has_scale=has_scale,
                          has_bias=has_bias, has_extra=has_extra, c_given=chunked, chunked=chunked,
                          n_tiles=n_tiles),
        grid=grid,
        in_specs=[tile] * 2 + [stat] * len(row_vals) + [param] * len(params) + [tile] * has_extra
        + [stat] * len(c_in),
        out_specs=[tile] + [part] * n_parts,
        out_shape=[jax.ShapeDtypeStruct(o.shape(rows, width), dx_dtype)]
        + [jax.ShapeDtypeStruct((n_prog, 1, width), F32)] * n_parts,
        name="rn_norm_bwd", flops=(12 + has_extra) * rows * width,
        **backend.call_kwargs(platform, plan.num_warps, dims),
    )(o.arr(dy), o.arr(h), *[vals.pack(v) for v in row_vals], *params, *([o.arr(dh_extra)] if has_extra else []),
      *[vals.pack(v) for v in c_in])
    dx, *parts = outs
    dx = o.arr(dx)
    # Small fixed-order reduction of the per-program partials.
    finished = [jnp.sum(p, axis=0).reshape(width) for p in parts]
    dscale = finished.pop(0) if has_scale else None
    dbias = finished.pop(0) if has_bias else None
    return dx, dscale, dbias
