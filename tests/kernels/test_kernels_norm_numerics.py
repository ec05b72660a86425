"""Kernels vs the float64 reference and the XLA path: outputs and all gradients, in interpret mode on CPU.

platform "cpu" runs the GPU (Triton-flavour) kernels -- power-of-two blocks, explicit masks -- in Pallas interpret
mode; "tpu_interpret" runs the TPU-flavour kernels under pltpu.InterpretParams. Forced plans exercise the
machinery (chunked multi-pass, backward row sub-blocks, edge blocks in both dims) at sizes interpret mode affords.
"""
from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from kernels_norm_check import GPU_PLATFORM, check, make_inputs
from rnlib.kernels import plan_for
from rnlib.kernels import Plan

F32, BF16, F16 = np.float32, jnp.bfloat16, np.float16

# rows, width, dtype, rms, residual, scale, bias
DEFAULT_CASES = [
    (199, 761, F32, False, False, True, True),
    (37, 1153, F32, True, True, True, False),
    (4096, 128, BF16, False, True, True, True),
    (1, 1, F32, False, False, True, True),
    (37, 1, BF16, True, False, True, False),
    (37, 7, F16, True, False, False, False),
    (199, 1000, BF16, False, False, False, True),
    (37, 1024, F16, False, True, True, True),
    (37, 4096, F32, False, True, True, True),
    (2, 65536, BF16, False, True, True, True),   # whole row on chip (16-bit)
    (2, 65536, F32, True, False, True, False),   # chunked (float32)
    (2, 40000, F32, False, True, True, True),    # chunked, partial last chunk
    (1, 262144, F32, False, True, True, True),   # chunked
    (2, 262144, BF16, True, True, True, False),  # chunked
]


def _id(c):
    r, w, dt, rms, res, s, b = c
    return f"{r}x{w}-{np.dtype(dt).name}-{'rms' if rms else 'ln'}{'-add' if res else ''}{'-s' if s else ''}{'-b' if b else ''}"


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=_id)
def test_gpu_kernels_interpret(case):
    rows, width, dtype, rms, res, s, b = case
    inp = make_inputs(rows, width, dtype, residual=res, scale=s, bias=b, seed=rows + width)
    check(inp, rms=rms, platform=GPU_PLATFORM)


TPU_CASES = [
    (37, 761, F32, False, True, True, True),
    (199, 128, BF16, True, False, True, False),
    (1, 65536, F32, False, True, True, True),    # chunked (TPU chunks of 16384)
    pytest.param((3, 40000, F16, False, False, True, True), marks=pytest.mark.slow),  # partial last chunk
]


@pytest.mark.parametrize("case", TPU_CASES, ids=_id)
def test_tpu_kernels_interpret(case):
    rows, width, dtype, rms, res, s, b = case
    inp = make_inputs(rows, width, dtype, residual=res, scale=s, bias=b, seed=rows * width)
    check(inp, rms=rms, platform="tpu_interpret")


FORCED = [  # (platform, plan, case): small blocks so edge tiles, chunking and sub-block loops all occur
    (GPU_PLATFORM, Plan("gpu", 4, 128, 10, 4, 4), (37, 1153, F32, False, True, True, True)),
    pytest.param(GPU_PLATFORM, Plan("gpu", 4, 128, 10, 4, 2), (37, 1153, BF16, True, False, True, False),
                 marks=pytest.mark.slow),
    (GPU_PLATFORM, Plan("gpu", 8, 1024, 1, 4, 4), (199, 761, BF16, True, True, True, True)),
    (GPU_PLATFORM, Plan("gpu", 2, 8, 1, 2, 8), (37, 7, F16, False, False, True, True)),
    # whole-row forward, chunked backward (the wide-row GPU plans: fewer elements per thread backward)
    (GPU_PLATFORM, Plan("gpu", 2, 2048, 1, 4, 1, bwd=Plan("gpu", 4, 512, 3, 4, 4)),
     (37, 1153, F32, False, True, True, True)),
    ("tpu_interpret", Plan("tpu", 8, 761, 1, None, 1), (37, 761, F32, False, False, True, True)),
    ("tpu_interpret", Plan("tpu", 8, 256, 5, None, 1), (37, 1153, F16, False, True, True, True)),
    ("tpu_interpret", Plan("tpu", 8, 128, 8, None, 1), (13, 1000, BF16, True, True, True, False)),
    # TPU backward partials summed over an "arbitrary" grid dimension: 5 tiles in slices of 3 (the last slice has
    # a step past the last tile); (tiles, 1, 8) statistics
    ("tpu_interpret", Plan("tpu", 8, 761, 1, None, 3), (37, 761, F32, False, False, True, True)),
    # (1, rows) statistics in (1, 128) blocks with an edge tile; 3 tiles in slices of 2
    ("tpu_interpret", Plan("tpu", 128, 256, 1, None, 2), (300, 256, BF16, False, True, True, True)),
    # chunked: 2 tiles in one slice of 4 steps, statistics partials per chunk
    ("tpu_interpret", Plan("tpu", 8, 128, 8, None, 4), (13, 1000, F32, False, True, True, True)),
    # transposed (the kernels take x.T, rows along the lanes: XLA's column-major layouts): 128-row tiles with an
    # edge tile, in slices of 2; one full-dim tile; chunks of 256 (with a partial last one) of 128-row tiles
    ("tpu_interpret", Plan("tpu", 128, 1000, 1, None, 2, transposed=True), (300, 1000, F32, False, True, True, True)),
    ("tpu_interpret", Plan("tpu", 128, 1000, 1, None, 3, transposed=True), (300, 1000, BF16, True, False, True, False)),
    ("tpu_interpret", Plan("tpu", 37, 7, 1, None, 1, transposed=True), (37, 7, F16, False, False, True, True)),
    ("tpu_interpret", Plan("tpu", 37, 7, 1, None, 1, transposed=True), (37, 7, BF16, True, True, False, False)),
    ("tpu_interpret", Plan("tpu", 128, 256, 4, None, 2, transposed=True), (300, 1000, F32, False, True, True, True)),
    ("tpu_interpret", Plan("tpu", 128, 256, 4, None, 1, transposed=True), (200, 1000, BF16, True, True, True, False)),
]


@pytest.mark.parametrize("platform,plan,case", FORCED, ids=lambda v: _id(v) if isinstance(v, tuple) else None)
def test_forced_plans(platform, plan, case):
    rows, width, dtype, rms, res, s, b = case
    assert plan.n_chunks == -(-width // plan.block_cols)
    assert plan.backward.n_chunks == -(-width // plan.backward.block_cols)
    inp = make_inputs(rows, width, dtype, residual=res, scale=s, bias=b, seed=7)
    check(inp, rms=rms, platform=platform, plan=plan)


def test_transposed_plans():
    """Transposed TPU plans (rows along the lanes): row tiles a multiple of 128 or all rows, widths whole or in
    chunks of a multiple of 8; never on the GPU flavour, nor by default off a TPU."""
    for rows, width in itertools.product((7, 300, 4096, 4097), (1, 7, 1000, 2040, 40000, 262147)):
        for gen in ("v5e", "v6e", "v5p"):
            p = plan_for(rows, width, F32, "tpu", generation=gen, transposed=True)
            for q in (p, p.backward):
                assert q.transposed
                assert q.block_rows == rows or q.block_rows % 128 == 0, (rows, width, gen, q)
                assert q.block_cols == width or q.block_cols % 8 == 0, (rows, width, gen, q)
                assert q.n_chunks == -(-width // q.block_cols)
    assert not plan_for(4096, 1000, F32, "tpu").transposed  # CPU host: XLA's CPU layouts are row-major
    assert not plan_for(4096, 1000, F32, "gpu", transposed=True).transposed


def test_default_plans_cover_all_paths():
    """The table picks whole-row tiles with several rows for narrow widths and chunks for >= 262144."""
    narrow = plan_for(4096, 128, BF16, "gpu")
    assert not narrow.chunked and narrow.block_rows > 1
    assert plan_for(4, 262144, BF16, "gpu").chunked and plan_for(4, 262144, F32, "tpu").chunked
    assert plan_for(4, 4096, F32, "gpu").block_cols == 4096
    assert plan_for(4096, 4096, F32, "gpu").bwd_sub_blocks > 1
    wide = plan_for(4096, 16384, F32, "gpu")  # whole row forward, chunked backward (register budget)
    assert not wide.chunked and wide.backward.chunked and wide.backward.num_warps <= 8
    for w in (1, 7, 761, 1153, 40000, 262144):
        p = plan_for(37, w, F32, "gpu")
        assert p.block_rows & (p.block_rows - 1) == 0 and p.block_cols & (p.block_cols - 1) == 0
        t = plan_for(37, w, F32, "tpu")
        assert t.block_cols == w or t.block_cols % 128 == 0
        assert t.block_rows == 37 or t.block_rows % 8 == 0


WIDTHS = (1, 7, 128, 761, 1000, 1024, 1153, 4096, 65536, 262144)
ROWS = (1, 37, 199, 4096)
SLOW_CASES = [
    (r, w, dt, bool(i % 2), bool((i // 2) % 2), True, bool(i % 3))
    for i, (w, r, dt) in enumerate(itertools.product(WIDTHS, ROWS, (F32, BF16, F16)))
    if r * w <= 1 << 21
]


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=_id)
def test_grid_interpret(case):
    rows, width, dtype, rms, res, s, b = case
    inp = make_inputs(rows, width, dtype, residual=res, scale=s, bias=b, seed=rows + 3 * width)
    check(inp, rms=rms, platform=GPU_PLATFORM)
