"""TPU plans and memory layouts, checked without a TPU: the per-row statistics are lane-dense in HBM, the
backward's dscale/dbias partials stay under the GPU's bound, and tiles follow each generation's scoped VMEM.

The HBM sizes are those of XLA's TPU layouts: (8, 128) tiles for the two minor dims, (1, 128) when the
second-minor dim is 1 (as the compiled HLO shows for the kernels' operands).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnlib import kernels as K
from rnlib.kernels import _heuristics as H


def _tpu_bytes(aval) -> int:
    *lead, a, b = (1,) * max(0, 2 - len(aval.shape)) + tuple(aval.shape)
    a = a if a == 1 else -(-a // 8) * 8
    return int(np.prod(lead, dtype=np.int64)) * a * (-(-b // 128) * 128) * jnp.dtype(aval.dtype).itemsize


def _pallas_avals(rows, width, dtype, *, rms, residual):
    """(inputs, outputs) avals of every pallas_call of one forward + backward on "tpu" (traced, not lowered)."""
    x = jax.ShapeDtypeStruct((rows, width), dtype)
    vec = jax.ShapeDtypeStruct((width,), jnp.float32)

    def f(x, r, s, b, dy):
        y, h, mean, rstd = K.norm_fwd(x, r, s, b, epsilon=1e-6, rms=rms, out_dtype=dtype,
                                      residual_dtype=dtype if residual else None, platform="tpu")
        return y, K.norm_bwd(dy, x if h is None else h, mean, rstd, s, r, rms=rms, has_bias=b is not None,
                             dx_dtype=dtype, platform="tpu")

    jaxpr = jax.make_jaxpr(f)(x, x if residual else None, vec, None if rms else vec, x)
    calls = [e for e in jaxpr.eqns if e.primitive.name == "pallas_call"]
    assert calls
    return [([v.aval for v in e.invars], [v.aval for v in e.outvars]) for e in calls]


@pytest.mark.parametrize("rows,width,dtype,rms,residual", [
    (4096, 128, jnp.float32, False, False),   # 1024-row tiles: (1, rows) statistics
    (4097, 761, jnp.bfloat16, False, True),   # edge tile
    (4096, 4096, jnp.float32, True, False),   # 64-row tiles: (tiles, 1, 64) statistics
    (7, 1000, jnp.float32, False, False),     # one full-dim tile
])
def test_statistics_lane_dense_in_hbm(rows, width, dtype, rms, residual):
    """Every kernel operand/result other than the (rows, width) arrays -- statistics, parameters, partials -- takes
    at most twice its unpadded size in HBM, plus 4 KiB (a (rows, 1) float32 column would take 128 times)."""
    small = [a for ins, outs in _pallas_avals(rows, width, dtype, rms=rms, residual=residual)
             for a in ins + outs if a.shape != (rows, width)]
    assert any(a.size >= rows for a in small)  # the per-row values are among them
    for a in small:
        raw = int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize
        assert _tpu_bytes(a) <= 2 * raw + 4096, (a, _tpu_bytes(a), raw)


@pytest.mark.parametrize("width", [1, 128, 761, 1000, 4096, 16384, 40000, 65536, 262144, 262147])
@pytest.mark.parametrize("rows", [64, 4096, 4097])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("transposed", [False, True])
def test_backward_partials_bounded(rows, width, dtype, transposed):
    """dscale + dbias partials (written and read: 16 bytes a column each; lane-dense on transposed plans too)
    <= 10 % of the backward's 3 |x|, with two slices (v5p's two cores) wherever the bound allows."""
    item = jnp.dtype(dtype).itemsize
    for gen in H.TPU_SCOPED_VMEM:
        plan = K.plan_for(rows, width, dtype, "tpu", generation=gen, transposed=transposed).backward
        n_tiles = -(-rows // plan.block_rows)
        n_part = -(-n_tiles // plan.bwd_sub_blocks)
        assert 16 * n_part * width <= H.BWD_PARTIAL_FRACTION * 3 * rows * width * item
        if rows >= 4096:
            assert n_part == min(2, n_tiles)


def test_transposed_only_where_it_pays():
    """Column-major operands take the transposed kernels where the compile check measured them cheaper than the
    row-major kernels plus XLA's layout copies: the sweep's widths at 4096 rows, not 128-512 rows, and multi-pass
    (chunked) transposed plans only for arrays too large for VMEM."""
    for gen in H.TPU_SCOPED_VMEM:
        for width, item in ((1, 4), (7, 2), (1000, 4), (1000, 2), (40000, 4), (40000, 2), (262147, 4)):
            assert H.tpu_transposed_pays(4096, width, item, gen), (gen, width, item)
        assert not H.tpu_transposed_pays(512, 1000, 2, gen)
        assert not H.tpu_transposed_pays(4096, 3000 if gen != "v6e" else 6000, 4, gen)  # chunked, 48-96 MB
        assert H.tpu_transposed_pays(4096, 20000, 4, gen)  # chunked, 328 MB


def test_tiles_follow_the_generation():
    """v6e's 32 MiB scoped VMEM takes twice v5e's/v5p's tiles: whole float32 rows up to 65536 instead of 32768."""
    assert H.tpu_tile_bytes("v6e") == 2 * H.tpu_tile_bytes("v5e") == 2 * H.tpu_tile_bytes("v5p")
    assert H.tpu_tile_bytes(None) == H.tpu_tile_bytes("v5e")  # unknown chip: the smallest budget
    assert not K.plan_for(64, 65536, jnp.float32, "tpu", generation="v6e").chunked
    assert K.plan_for(64, 65536, jnp.float32, "tpu", generation="v5e").chunked
    assert K.plan_for(64, 40000, jnp.float32, "tpu", generation="v6e").block_rows == 8
    v5p = K.plan_for(64, 32768, jnp.float32, "tpu", generation="v5p")  # v5p: float32 backward on smaller tiles
    assert not v5p.chunked and v5p.backward.chunked
    assert not K.plan_for(64, 32768, jnp.bfloat16, "tpu", generation="v5p").backward.chunked
    for gen in H.TPU_SCOPED_VMEM:
        for w in (1, 128, 761, 1000, 4096, 16384, 262147):
            fwd = K.plan_for(4096, w, jnp.float32, "tpu", generation=gen)
            for p in (fwd, fwd.backward):
                assert p.block_rows * -(-p.block_cols // 128) * 128 * 4 <= H.tpu_tile_bytes(gen)
                assert p.block_rows % 128 == 0 or p.block_rows < 128  # whole (1, 128k) statistics blocks


def test_generation_unknown_off_tpu():
    """On this CPU host no TPU is traced for: the plan falls back to the smallest budget."""
    assert K.tpu_generation() is None
    assert K.plan_for(4096, 65536, jnp.float32, "tpu") == K.plan_for(4096, 65536, jnp.float32, "tpu",
                                                                      generation="v5e")
