"""Hostile inputs (mean 1e4 with std 1e-2, constant and zero rows), NaN propagation, poisoned outputs, determinism and argument checks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from kernels_norm_check import GPU_PLATFORM, check, make_inputs, run_kernels
from rnlib import kernels as K
from rnlib import ops
from rnlib.kernels import Plan


@pytest.mark.parametrize("kind,dtype,rms,width", [
    ("offset", np.float32, True, 761),      # mean 1e4, std 1e-2 (layer norm: test_offset_rows_float32_bar)
    ("offset", jnp.bfloat16, True, 1153),   # bf16 rounds 1e4 + 1e-2 noise to constant rows
    ("offset", jnp.bfloat16, False, 761),
    ("constant", np.float32, False, 1153),
    ("constant", np.float16, True, 761),
    ("zero", np.float32, False, 7),
    ("zero", jnp.bfloat16, True, 1000),
])
def test_hostile_inputs(kind, dtype, rms, width):
    inp = make_inputs(37, width, dtype, kind=kind, residual=kind == "zero", seed=3)
    check(inp, rms=rms, platform=GPU_PLATFORM)


@pytest.mark.parametrize("kind,dtype,rms,width", [
    ("constant", np.float32, False, 1153),
    ("zero", jnp.bfloat16, True, 1000),
    ("offset", jnp.bfloat16, False, 761),
])
def test_hostile_inputs_transposed(kind, dtype, rms, width):
    """The transposed TPU kernels (rows along the lanes, for XLA's column-major layouts) on the same inputs."""
    inp = make_inputs(37, width, dtype, kind=kind, residual=kind == "zero", seed=3)
    check(inp, rms=rms, platform="tpu_interpret", plan=Plan("tpu", 37, width, 1, None, 1, transposed=True))


# Whole-row and chunked (forced small chunks: the real chunked plans start at widths interpret mode crawls through),
# on both kernel flavours.
OFFSET_PATHS = [
    pytest.param(GPU_PLATFORM, None, 761, id="gpu-row"),
    pytest.param(GPU_PLATFORM, Plan("gpu", 4, 128, 10, 4, 2), 1153, id="gpu-chunked"),
    pytest.param("tpu_interpret", None, 761, id="tpu-row"),
    pytest.param("tpu_interpret", Plan("tpu", 8, 256, 5, None, 1), 1153, id="tpu-chunked"),
    pytest.param("tpu_interpret", Plan("tpu", 37, 761, 1, None, 1, transposed=True), 761, id="tpu-t-row"),
    pytest.param("tpu_interpret", Plan("tpu", 37, 256, 5, None, 1, transposed=True), 1153, id="tpu-t-chunked"),
]


@pytest.mark.parametrize("residual", [False, True], ids=["ln", "add_ln"])
@pytest.mark.parametrize("platform,plan,width", OFFSET_PATHS)
def test_offset_rows_float32_bar(platform, plan, width, residual):
    """mean 1e4 / std 1e-2 in float32 meets the ordinary float32 bar (check(): RTOL_F32 of each output's scale for
    y, dx, dscale, dbias, rstd and the row mean). A float32 mean of h is off by ~ulp(1e4) ~ 1e-3, 10% of the std;
    without the kernels' h[:, 0] shift the errors were ~2e-2 (y), ~3e-3-1e-2 (dx) and ~1e-2 (dscale) of scale."""
    inp = make_inputs(37, width, np.float32, kind="offset", residual=residual, seed=3)
    check(inp, rms=False, platform=platform, plan=plan)


def test_offset_rows_statistics_in_float32():
    """The saved statistics themselves: rstd to 1e-5 (E[x^2]-E[x]^2 would lose it all: its cancellation error,
    ~1e8 * 6e-8, dwarfs var = 1e-4) and the row mean h[:, 0] + mean to 1e-5 of the std (a float32 row mean
    cannot do better than ~1e-3 = 0.1 std)."""
    inp = make_inputs(37, 1153, np.float32, kind="offset", seed=5)
    out = run_kernels(inp, rms=False, platform=GPU_PLATFORM)
    x = inp["x"].astype(np.float64)
    true_rstd = 1 / np.sqrt(x.var(axis=1) + 1e-6)
    assert np.max(np.abs(out["rstd"] / true_rstd - 1)) < 1e-5
    row_mean = x[:, 0] + out["mean"].astype(np.float64)
    assert np.max(np.abs(row_mean - x.mean(axis=1))) < 1e-5 * 1e-2


@pytest.mark.parametrize("platform,plan", [(GPU_PLATFORM, None), (GPU_PLATFORM, Plan("gpu", 4, 128, 10, 4, 2)),
                                           ("tpu_interpret", None),
                                           ("tpu_interpret", Plan("tpu", 37, 256, 5, None, 1, transposed=True))])
def test_nan_propagates_to_its_row_only(platform, plan):
    inp = make_inputs(37, 1153, np.float32, residual=True, seed=11)
    inp["x"][3, 500] = np.nan
    inp["dy"][20, 7] = np.nan
    out = run_kernels(inp, rms=False, platform=platform, plan=plan)
    bad_y = ~np.isfinite(out["y"]).all(axis=1)
    assert bad_y.tolist() == [i == 3 for i in range(37)]
    bad_dx = ~np.isfinite(out["dx"]).all(axis=1)
    assert bad_dx.tolist() == [i in (3, 20) for i in range(37)]
    assert np.isnan(out["dscale"]).all() and np.isnan(out["dbias"][7]) and np.isfinite(np.delete(out["dbias"], 7)).all()
    check(inp, rms=False, platform=platform, plan=plan, compare_xla=False)  # finite parts match the reference


def test_interpret_mode_poisons_unwritten_outputs():
    """The finiteness checks prove every element is written: interpret mode starts outputs (and pads) as NaN."""
    def half_writer(x_ref, o_ref):
        @pl.when(pl.program_id(0) == 0)
        def _():
            o_ref[...] = x_ref[...]

    out = pl.pallas_call(half_writer, grid=(2,), in_specs=[pl.BlockSpec((4, 128), lambda i: (i, 0))],
                         out_specs=pl.BlockSpec((4, 128), lambda i: (i, 0)),
                         out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32), interpret=True)(jnp.ones((8, 128)))
    out = np.asarray(out)
    assert np.all(out[:4] == 1) and np.all(np.isnan(out[4:]))


@pytest.mark.parametrize("platform", [GPU_PLATFORM, "tpu_interpret"])
def test_deterministic_bits(platform):
    inp = make_inputs(199, 761, jnp.bfloat16, residual=True, seed=2)
    a = run_kernels(inp, rms=False, platform=platform)
    b = run_kernels(inp, rms=False, platform=platform)
    for k, v in a.items():
        if v is not None:
            assert np.array_equal(v.view(np.uint8), b[k].view(np.uint8)), k


def test_supports_and_argument_checks():
    assert K.supports(4096, 262144, jnp.bfloat16, "gpu")
    assert K.supports(3, 5, np.float32, "cuda") and K.supports(1, 1, np.float16, "gpu")
    # Mosaic rejects float16 vector loads (compile_check --target tpu_*): XLA serves it; interpret mode still runs
    assert not K.supports(1, 1, np.float16, "tpu") and K.supports(1, 1, np.float16, "tpu_interpret")
    assert not K.supports(4, 4, np.float64, "gpu")
    assert not K.supports(4, 4, np.int32, "cpu")
    assert not K.supports(4, 4, np.float32, "metal")
    assert not K.supports(0, 4, np.float32, "cpu")
    # a forced impl="pallas" on a problem the kernels refuse says why; "auto" serves it with XLA
    x = jnp.ones((4, 8), np.float16)
    with pytest.raises(ValueError, match="impl='pallas' cannot run.*float16 on platform 'tpu'"):
        jax.jit(lambda x: ops.layer_norm(x, impl="pallas", platform="tpu")).lower(x)
    jax.jit(lambda x: ops.layer_norm(x, platform="tpu")).lower(x)


def test_out_dtype_and_residual_dtype():
    """y in the requested dtype; h rounded to residual_dtype and the statistics taken over that rounded h."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(37, 761)), jnp.bfloat16)
    r = jnp.asarray(rng.normal(size=(37, 761)), jnp.float32)
    y, h, mean, rstd = K.norm_fwd(x, r, None, None, epsilon=1e-6, rms=False, out_dtype=jnp.float32,
                                  residual_dtype=jnp.float16, platform=GPU_PLATFORM)
    assert y.dtype == jnp.float32 and h.dtype == jnp.float16
    h_ref = (np.asarray(x, np.float32) + np.asarray(r, np.float32)).astype(np.float16)  # the contract's rounding
    np.testing.assert_array_equal(np.asarray(h), h_ref)
    hd = h_ref.astype(np.float64)
    y_ref = (hd - hd.mean(1, keepdims=True)) / np.sqrt(hd.var(1, keepdims=True) + 1e-6)
    assert np.max(np.abs(np.asarray(y) - y_ref)) < 1e-5 * np.max(np.abs(y_ref))


@pytest.mark.parametrize("platform,plan", [OFFSET_PATHS[1].values[:2], OFFSET_PATHS[3].values[:2]],
                         ids=["gpu-chunked", "tpu-chunked"])
def test_chunked_fused_add_reanchors_the_shift(platform, plan):
    """Chunked fused add in bf16: the statistics' shift x[:, 0] + residual[:, 0] (float32) is not the rounded
    h[:, 0] the backward recomputes, so the saved mean is re-anchored on h[:, 0]. Without that, x_hat would be off
    by (x0 + r0 - h0) * rstd ~ 1e-2 * 1e3 here (bf16 rounds 1e4 + noise to constant rows: rstd = 1/sqrt(eps))."""
    inp = make_inputs(37, 1153, jnp.bfloat16, kind="offset", residual=True, seed=4)
    assert np.any(inp["x"][:, 0].astype(np.float32) + inp["residual"][:, 0].astype(np.float32)
                  != (inp["x"][:, 0].astype(np.float32) + inp["residual"][:, 0].astype(np.float32)).astype(jnp.bfloat16))
    check(inp, rms=False, platform=platform, plan=plan)
