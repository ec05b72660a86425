"""Shared checker for the kernel tests: run rnlib.kernels (fwd + bwd under one jit) and compare every output with
the float64 reference (tests/norm_reference.py) and with the XLA path (rnlib's plain maths, rnlib.ops._norm_math).

Tolerances: float32 y/dx -- max abs error <= RTOL_F32 of the natural scale of the output, hostile
inputs included (mean 1e4 / std 1e-2 needs the kernels' h[:, 0] shift to meet it); bf16/f16 y/dx -- twice the error
of the naive same-dtype computation plus a small atol. Statistics and dscale/dbias are float32 for every input
dtype and are held to RTOL_F32: rstd of its scale; dbias of sum_rows |dy|; dscale of the larger of sum_rows
|dy * xhat| and sum_rows |dy| (xhat within RTOL_F32 absolute: constant rows have xhat = 0 but a float32 xhat of
1e-7 is still right); the row mean, recovered as h[:, 0] + saved mean (the kernels' shifted convention), of the
row's spread max|h - h[:, 0]|.
Interpret mode fills every output buffer with NaN before the kernels run (and pads out-of-bounds block elements
with NaN), so "finite wherever the reference is finite" proves each element was written and no padding leaked.
On a GPU (RNLIB_KERNEL_TEST_PLATFORM=gpu) a NaN-filled buffer is freed just before the call so that the allocator
likely reuses it for the outputs (best effort; XLA gives no guarantee).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

import norm_reference as ref
from rnlib import kernels as K
from rnlib.kernels._norm_bwd import norm_bwd_impl
from rnlib.kernels._norm_fwd import norm_fwd_impl

# "cpu": GPU-flavour kernels in interpret mode (default). benchmarks/device/run.sh sets "gpu" to run the same tests
# through the Triton backend on a real GPU.
GPU_PLATFORM = os.environ.get("RNLIB_KERNEL_TEST_PLATFORM", "cpu")
ON_DEVICE = GPU_PLATFORM != "cpu"
EPS = 1e-6
RTOL_F32 = 1e-5
LOW_ATOL = 1e-2  # bf16/f16 (plus 2x the naive error)


def make_inputs(rows, width, dtype, *, seed=0, residual=False, scale=True, bias=True, kind="normal"):
    """Host arrays already rounded to their dtypes: dict of x, residual, scale, bias, dy, dh_extra."""
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.normal(size=(rows, width))
    elif kind == "offset":  # mean 1e4, std 1e-2
        x = 1e4 + 1e-2 * rng.normal(size=(rows, width))
    elif kind == "constant":
        x = np.broadcast_to(rng.choice([0.1, 3.0, -7.25], size=(rows, 1)), (rows, width)).copy()
    elif kind == "zero":
        x = np.zeros((rows, width))
    else:
        raise ValueError(kind)
    d = {"x": x.astype(dtype)}
    # The offset case keeps a small residual so that h = x + residual stays hostile (mean 1e4, std ~1.4e-2).
    res_std = 1e-2 if kind == "offset" else 1.0
    d["residual"] = (res_std * rng.normal(size=(rows, width))).astype(dtype) if residual else None
    d["scale"] = (1 + 0.5 * rng.normal(size=width)).astype(np.float32) if scale else None
    d["bias"] = rng.normal(size=width).astype(np.float32) if bias else None
    d["dy"] = rng.normal(size=(rows, width)).astype(dtype)
    d["dh_extra"] = rng.normal(size=(rows, width)).astype(dtype) if residual else None
    return d


def run_kernels(inp, *, rms, platform, plan=None, out_dtype=None, dx_dtype=None):
    """One jitted fwd + bwd through the public API (or the impl functions with a forced ``plan``)."""
    if platform == "tpu_interpret" and ON_DEVICE:
        import pytest
        pytest.skip("TPU interpret mode is checked on CPU; the device run spends its time on the GPU kernels")
    dtype = inp["x"].dtype
    out_dtype = dtype if out_dtype is None else out_dtype
    dx_dtype = dtype if dx_dtype is None else dx_dtype
    has_bias = inp["bias"] is not None

    def f(x, residual, scale, bias, dy, dh_extra):
        kw = dict(epsilon=EPS, rms=rms, out_dtype=out_dtype, residual_dtype=None if residual is None else dtype,
                  platform=platform)
        if plan is None:
            y, h, mean, rstd = K.norm_fwd(x, residual, scale, bias, **kw)
        else:
            y, h, mean, rstd = norm_fwd_impl(x, residual, scale, bias, plan=plan, **kw)
        saved = x if h is None else h
        bkw = dict(rms=rms, has_bias=has_bias, dx_dtype=dx_dtype, platform=platform)
        if plan is None:
            dx, ds, db = K.norm_bwd(dy, saved, mean, rstd, scale, dh_extra, **bkw)
        else:
            dx, ds, db = norm_bwd_impl(dy, saved, mean, rstd, scale, dh_extra, plan=plan, **bkw)
        return dict(y=y, h=h, mean=mean, rstd=rstd, dx=dx, dscale=ds, dbias=db)

    args = [None if inp[k] is None else jnp.asarray(inp[k])
            for k in ("x", "residual", "scale", "bias", "dy", "dh_extra")]
    fn = jax.jit(f).lower(*args).compile()
    if ON_DEVICE:  # best effort poisoning: free a NaN-filled buffer so the allocator hands it to the outputs
        jax.block_until_ready(jnp.full((4 * inp["x"].size + (1 << 16),), jnp.nan, jnp.float32)).delete()
    out = fn(*args)
    return {k: None if v is None else np.asarray(v) for k, v in out.items()}


def run_xla(inp, *, rms):
    from rnlib.ops import _norm_math

    dtype = inp["x"].dtype
    a = {k: None if v is None else jnp.asarray(v) for k, v in inp.items()}
    y, h, mean, rstd = _norm_math.forward(a["x"], a["residual"], a["scale"], a["bias"], epsilon=EPS, rms=rms,
                                          out_dtype=dtype, residual_dtype=None if a["residual"] is None else dtype)
    dx, ds, db = _norm_math.backward(a["dy"], a["x"] if h is None else h, mean, rstd, a["scale"], a["dh_extra"],
                                     rms=rms, has_bias=a["bias"] is not None, dx_dtype=dtype)
    return {k: np.asarray(v) for k, v in dict(y=y, dx=dx).items()}


def reference(inp, *, rms):
    """Float64 ground truth; with a residual, statistics use h rounded to the residual dtype (the contract)."""
    dtype = inp["x"].dtype
    h = inp["x"].astype(np.float64)
    if inp["residual"] is not None:
        h = (h + inp["residual"].astype(np.float64)).astype(dtype).astype(np.float64)
    mean, rstd = ref.stats(h, EPS, rms)
    y = ref.norm_fwd(h, inp["scale"], inp["bias"], eps=EPS, rms=rms)
    dx, ds, db = ref.norm_bwd(h, inp["dy"], inp["scale"], eps=EPS, rms=rms)
    if inp["dh_extra"] is not None:
        dx = dx + inp["dh_extra"].astype(np.float64)
    g = inp["dy"].astype(np.float64) * (1.0 if inp["scale"] is None else inp["scale"].astype(np.float64))
    xhat = (h - mean[:, None]) * rstd[:, None]
    return dict(h=h, mean=mean, rstd=rstd, y=y, dx=dx, dscale=ds, dbias=db,
                dx_scale=float(np.nanmax(np.abs(rstd[:, None] * g), initial=0.0)),
                col_scale=float(np.nanmax(np.sum(np.abs(inp["dy"].astype(np.float64) * xhat), 0), initial=0.0)),
                dbias_scale=float(np.nanmax(np.sum(np.abs(inp["dy"].astype(np.float64)), 0), initial=0.0)))


def naive_bwd_error(h64, dy, scale, dh_extra, *, rms, dtype):
    """Max abs dx error of the backward formula computed naively in ``dtype`` (the low-precision bar)."""
    hd, dyd = jnp.asarray(h64, dtype), jnp.asarray(dy, dtype)
    mean = jnp.zeros(hd.shape[:-1] + (1,), dtype) if rms else jnp.mean(hd, -1, keepdims=True)
    var = jnp.mean(jnp.square(hd - mean), -1, keepdims=True)
    rstd = 1 / jnp.sqrt(var + jnp.asarray(EPS, dtype))
    xhat = (hd - mean) * rstd
    g = dyd * jnp.asarray(scale, dtype) if scale is not None else dyd
    dx = g - xhat * jnp.mean(g * xhat, -1, keepdims=True)
    if not rms:
        dx = dx - jnp.mean(g, -1, keepdims=True)
    dx = rstd * dx
    if dh_extra is not None:
        dx = dx + jnp.asarray(dh_extra, dtype)
    r = ref.norm_bwd(h64, dy, scale, eps=EPS, rms=rms)[0] + (0 if dh_extra is None else dh_extra.astype(np.float64))
    return float(np.nanmax(np.abs(np.asarray(dx, np.float64) - r), initial=0.0))


def _err(a, b):
    a = np.asarray(a, np.float64)
    both = np.isfinite(b)
    assert np.array_equal(np.isfinite(a), both), "non-finite pattern differs from the reference (unwritten/leak?)"
    return float(np.max(np.abs(a[both] - b[both]), initial=0.0))


def tolerances(inp, r, *, rms):
    """Allowed max abs error per output."""
    dtype = np.dtype(inp["x"].dtype)
    low = dtype != np.float32
    y_scale = max(1.0, float(np.nanmax(np.abs(r["y"]), initial=0.0)))
    if low:
        naive_y = ref.naive_error(r["h"], inp["scale"], inp["bias"], eps=EPS, rms=rms, dtype=dtype)
        naive_dx = naive_bwd_error(r["h"], inp["dy"], inp["scale"], inp["dh_extra"], rms=rms, dtype=dtype)
        tol_y, tol_dx = 2 * naive_y + LOW_ATOL, 2 * naive_dx + LOW_ATOL * max(1.0, r["dx_scale"])
    else:
        tol_y, tol_dx = RTOL_F32 * y_scale, RTOL_F32 * r["dx_scale"]
    spread = float(np.nanmax(np.abs(r["h"] - r["h"][:, :1]), initial=0.0))
    h_max = float(np.nanmax(np.abs(r["h"]), initial=0.0))  # 1e-12 of it: the float64 reference's own rounding
    return dict(y=tol_y, dx=tol_dx + 1e-30, mean=RTOL_F32 * spread + 1e-12 * h_max + 1e-30,
                rstd=RTOL_F32 * float(np.nanmax(r["rstd"], initial=0.0)),
                dscale=RTOL_F32 * max(r["col_scale"], r["dbias_scale"]) + 1e-30, dbias=RTOL_F32 * r["dbias_scale"] + 1e-30)


def check(inp, *, rms, platform=GPU_PLATFORM, plan=None, compare_xla=True):
    """Run the kernels and assert every output against the reference; returns {name: (err, tol)}."""
    out = run_kernels(inp, rms=rms, platform=platform, plan=plan)
    r = reference(inp, rms=rms)
    tol = tolerances(inp, r, rms=rms)
    report = {}
    if inp["residual"] is not None:
        assert out["h"].dtype == inp["x"].dtype
        np.testing.assert_array_equal(out["h"].astype(np.float64), r["h"])
    else:
        assert out["h"] is None
    assert out["y"].dtype == inp["x"].dtype and out["dx"].dtype == inp["x"].dtype
    assert out["mean"].dtype == np.float32 and out["rstd"].dtype == np.float32
    names = ["y", "dx", "rstd"] + ([] if rms else ["mean"])
    names += ["dscale"] if inp["scale"] is not None else []
    names += ["dbias"] if inp["bias"] is not None else []
    assert (out["dscale"] is None) == (inp["scale"] is None)
    assert (out["dbias"] is None) == (inp["bias"] is None)
    if rms:
        assert np.all(out["mean"] == 0)
    else:  # the saved mean is of h - h[:, 0]; the row mean is h[:, 0] + mean (h as stored)
        out["mean"] = r["h"][:, 0] + out["mean"].astype(np.float64)
    for k in names:
        e = _err(out[k], r[k])
        report[k] = (e, tol[k])
        assert e <= tol[k], f"{k}: max abs error {e:.3g} > tolerance {tol[k]:.3g} ({report})"
    if compare_xla:
        x = run_xla(inp, rms=rms)
        for k in ("y", "dx"):
            e = _err(out[k], np.asarray(x[k], np.float64))
            assert e <= 2 * tol[k] + 1e-30, f"{k} differs from the XLA path by {e:.3g}"
    return report
