"""rnlib.kernels.native (the C++ XLA FFI norm for CPU) against the float64 reference and rnlib's plain XLA maths.

Tolerances are those of the kernel tests (kernels_norm_check.tolerances: float32 1e-5 of each output's scale,
bf16/f16 2x the naive same-dtype error plus an atol). Beyond the numbers: h is rounded exactly as XLA rounds
(every bf16/f16 bit pattern is checked), NaN stays in its row, results are bit-identical from run to run and
across the instruction-set versions, and jit/vmap/sharding/grad-of-grad behave like the XLA backend.
"""
from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_norm_check import EPS, RTOL_F32, make_inputs, reference, tolerances
from rnlib.kernels import native
from rnlib.ops import _norm_math

F32, BF16, F16 = np.float32, jnp.bfloat16, np.float16

if not native.available():
    if shutil.which("c++") or shutil.which("g++"):  # a compiler was there, so the build should have worked
        pytest.fail(f"native library not available although a C++ compiler exists: {native.unavailable_reason()}",
                    pytrace=False)
    pytest.skip(f"native library not built: {native.unavailable_reason()}", allow_module_level=True)


class norm_xla:
    """The plain maths with the raw backend-call signature of ``native.norm_fwd``/``norm_bwd``."""

    @staticmethod
    def norm_fwd(x, residual, scale, bias, *, epsilon, rms, out_dtype, residual_dtype=None):
        return _norm_math.forward(x, residual, scale, bias, epsilon=epsilon, rms=rms, out_dtype=out_dtype,
                                  residual_dtype=residual_dtype)

    @staticmethod
    def norm_bwd(dy, h, mean, rstd, scale, dh_extra, *, rms, has_bias, dx_dtype):
        return _norm_math.backward(dy, h, mean, rstd, scale, dh_extra, rms=rms, has_bias=has_bias,
                                   dx_dtype=dx_dtype)


def _run(mod, inp, *, rms, out_dtype=None, dx_dtype=None, residual_dtype=None):
    """fwd + bwd of backend ``mod`` (native or norm_xla) under one jit; host arrays."""
    dtype = inp["x"].dtype
    has_bias = inp["bias"] is not None

    def f(x, residual, scale, bias, dy, dh_extra):
        y, h, mean, rstd = mod.norm_fwd(
            x, residual, scale, bias, epsilon=EPS, rms=rms, out_dtype=out_dtype or dtype,
            residual_dtype=None if residual is None else (residual_dtype or dtype))
        dx, ds, db = mod.norm_bwd(dy, x if h is None else h, mean, rstd, scale, dh_extra, rms=rms,
                                  has_bias=has_bias, dx_dtype=dx_dtype or dtype)
        return dict(y=y, h=h, mean=mean, rstd=rstd, dx=dx, dscale=ds, dbias=db)

    args = [None if inp[k] is None else jnp.asarray(inp[k]) for k in ("x", "residual", "scale", "bias", "dy",
                                                                      "dh_extra")]
    return {k: None if v is None else np.asarray(v) for k, v in jax.jit(f)(*args).items()}


def _max_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.array_equal(np.isfinite(a), np.isfinite(b)), "non-finite pattern differs"
    ok = np.isfinite(b)
    return float(np.max(np.abs(a[ok] - b[ok]), initial=0.0))


def check_native(inp, *, rms):
    """Every output against the float64 reference, and the saved statistics against norm_xla's."""
    out = _run(native, inp, rms=rms)
    r = reference(inp, rms=rms)
    tol = tolerances(inp, r, rms=rms)
    dtype = inp["x"].dtype
    assert out["y"].dtype == dtype and out["dx"].dtype == dtype
    assert out["mean"].dtype == np.float32 and out["rstd"].dtype == np.float32
    if inp["residual"] is not None:
        assert out["h"].dtype == dtype
        np.testing.assert_array_equal(out["h"].astype(np.float64), r["h"])
    else:
        assert out["h"] is None
    assert (out["dscale"] is None) == (inp["scale"] is None) and (out["dbias"] is None) == (inp["bias"] is None)
    got = dict(out)
    if rms:
        assert np.all(out["mean"] == 0)
    else:  # shifted convention: the row mean is h[:, 0] + saved mean
        got["mean"] = r["h"][:, 0] + out["mean"].astype(np.float64)
    names = ["y", "dx", "rstd"] + ([] if rms else ["mean"])
    names += (["dscale"] if inp["scale"] is not None else []) + (["dbias"] if inp["bias"] is not None else [])
    for k in names:
        e = _max_err(got[k], r[k])
        assert e <= tol[k], f"{k}: max abs error {e:.3g} > tolerance {tol[k]:.3g}"
    # Same saved statistics as the XLA backend, up to float32 summation order.
    x = _run(norm_xla, inp, rms=rms)
    assert _max_err(out["rstd"], x["rstd"]) <= 4e-6 * float(np.nanmax(x["rstd"], initial=1.0))
    spread = float(np.nanmax(np.abs(r["h"] - r["h"][:, :1]), initial=0.0))
    assert _max_err(out["mean"], x["mean"]) <= 2 * RTOL_F32 * spread + 1e-30
    for k in ("y", "dx"):
        assert _max_err(out[k], x[k]) <= 2 * tol[k], k
    return out


# rows, width, dtype, rms, residual, scale, bias
CASES = [
    (199, 761, F32, False, False, True, True),
    (37, 1153, F32, True, True, True, False),
    (64, 4096, BF16, False, True, True, True),
    (1, 1, F32, False, False, True, True),
    (37, 1, BF16, True, False, True, False),
    (37, 7, F16, True, False, False, False),
    (199, 1000, BF16, False, False, False, True),
    (37, 1024, F16, False, True, True, True),
    (1031, 96, F32, False, True, True, True),   # many row blocks, several threads
    (3, 70001, F32, False, True, True, True),   # huge width: several summation blocks, row over L1
    (2, 70001, BF16, True, False, True, False),
    (5, 17, F32, True, False, False, True),     # RMS with a bias (allowed by the contract)
]


def _id(c):
    r, w, dt, rms, res, s, b = c
    return (f"{r}x{w}-{np.dtype(dt).name}-{'rms' if rms else 'ln'}{'-add' if res else ''}{'-s' if s else ''}"
            f"{'-b' if b else ''}")


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_matches_reference_and_xla(case):
    rows, width, dtype, rms, res, s, b = case
    check_native(make_inputs(rows, width, dtype, residual=res, scale=s, bias=b, seed=rows + width), rms=rms)


@pytest.mark.parametrize("kind", ["offset", "constant", "zero"])
@pytest.mark.parametrize("dtype,rms", [(F32, False), (BF16, False), (F32, True)])
def test_hostile(kind, dtype, rms):
    # (no residual for RMS: its dh_extra would dwarf the tolerance's scale, rstd * dy ~ 1e-4 at mean 1e4)
    inp = make_inputs(33, 761, dtype, residual=kind == "offset" and not rms, seed=7, kind=kind)
    out = check_native(inp, rms=rms)
    if kind in ("constant", "zero") and not rms:  # var 0 -> rstd = rsqrt(eps)
        np.testing.assert_allclose(out["rstd"], 1 / np.sqrt(EPS), rtol=1e-6)


def test_width_one_is_rsqrt_eps():
    inp = make_inputs(5, 1, F32, seed=1)
    out = check_native(inp, rms=False)
    np.testing.assert_allclose(out["rstd"], 1 / np.sqrt(EPS), rtol=1e-6)
    np.testing.assert_array_equal(out["y"][:, 0], inp["bias"][0])  # x_hat == 0 exactly


@pytest.mark.parametrize("rms", [False, True])
def test_nan_stays_in_its_row(rms):
    inp = make_inputs(300, 257, F32, seed=3)
    bad = dict(inp, x=inp["x"].copy())
    bad["x"][123, 17] = np.nan
    clean, out = _run(native, inp, rms=rms), _run(native, bad, rms=rms)
    others = np.arange(300) != 123
    for k in ("y", "dx"):
        assert np.all(np.isnan(out[k][123])), k
        np.testing.assert_array_equal(out[k][others], clean[k][others])
    for k in ("rstd", "mean") if not rms else ("rstd",):
        assert np.isnan(out[k][123])
        np.testing.assert_array_equal(out[k][others], clean[k][others])
    assert np.all(np.isnan(out["dscale"]))  # dy * x_hat of the NaN row enters every column
    np.testing.assert_array_equal(out["dbias"], clean["dbias"])  # sum of dy: x plays no part


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
def test_deterministic_and_isa_independent(monkeypatch, dtype):
    inp = make_inputs(2053, 333, dtype, residual=True, seed=5)
    inp["x"][7, 3], inp["x"][9, 0] = np.nan, np.inf  # NaN/Inf rows: the 16-bit NaN encodings must agree too
    first = _run(native, inp, rms=False)
    levels = sorted({native.isa_level(i) for i in (1, 2, 3, 4)})
    runs = [_run(native, inp, rms=False)]
    for level in levels:  # _ISA is read at trace time; _run jits afresh
        monkeypatch.setattr(native, "_ISA", level)
        runs.append(_run(native, inp, rms=False))
    bits = lambda a: a.view(np.dtype(f"uint{8 * a.dtype.itemsize}"))  # bitwise, NaN payloads included
    for other in runs:
        for k, v in first.items():
            if v is not None:
                np.testing.assert_array_equal(bits(other[k]), bits(v), err_msg=k)


@pytest.mark.parametrize("fmt", [BF16, F16])
def test_every_16bit_pattern_loads_and_rounds_like_xla(fmt):
    bits = np.arange(1 << 16, dtype=np.uint16)
    x16 = jnp.asarray(bits.view(np.dtype(fmt)).reshape(256, 256))
    zeros32 = jnp.zeros((256, 256), jnp.float32)
    add = jax.jit(lambda a, z, dt: (a.astype(jnp.float32) + z).astype(dt), static_argnums=2)  # XLA's h
    # load: h = float32(x) + 0 kept in float32, exactly as XLA computes it (which flushes subnormals to zero)
    h = native.norm_fwd(x16, zeros32, None, None, epsilon=EPS, rms=True, out_dtype=jnp.float32,
                        residual_dtype=jnp.float32)[1]
    np.testing.assert_array_equal(np.asarray(h), np.asarray(add(x16, zeros32, jnp.float32)))
    # store: float32 values near every 16-bit value (ties, halfway points, overflow, subnormals) rounded to fmt
    rng = np.random.default_rng(0)
    f32 = np.asarray(x16.astype(jnp.float32)).view(np.uint32)
    low_bits = 16 if fmt == BF16 else 13  # float32 mantissa bits below the 16-bit format's last one
    jitter = rng.integers(0, 1 << (low_bits + 1), size=f32.shape, dtype=np.uint32)
    jitter[:, ::2] = 1 << (low_bits - 1)  # exact ties (for normal values): round half to even
    vals = np.where(np.isfinite(np.asarray(x16, np.float32)), f32 + jitter, f32).view(np.float32)
    vals[0, :8] = [65504.0, 65519.99, 65520.0, 3.0e38, 1e-8, 2.98e-8, 5.96e-8, -0.0]
    v = jnp.asarray(vals)
    h = native.norm_fwd(v, zeros32, None, None, epsilon=EPS, rms=True, out_dtype=jnp.float32, residual_dtype=fmt)[1]
    want = np.asarray(add(v, zeros32, fmt))  # the contract: round(x + residual) (so -0 + 0 = +0)
    got = np.asarray(h)
    nan = np.isnan(want.astype(np.float32))
    np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), nan)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])


MIXED = [  # x dtype, residual dtype, residual_dtype (of h), out_dtype, dx_dtype, param dtype, dh_extra dtype
    (BF16, F32, F32, BF16, F32, F32, F32),
    (F32, BF16, BF16, F32, F32, F32, BF16),
    (BF16, BF16, BF16, F32, BF16, BF16, BF16),
    (F16, F32, F16, F16, F32, F16, F16),
    (BF16, None, None, F16, F32, F32, None),
]


@pytest.mark.parametrize("case", MIXED, ids=lambda c: "-".join(np.dtype(d).name if d else "none" for d in c))
@pytest.mark.parametrize("rms", [False, True])
def test_mixed_dtypes_match_xla(case, rms):
    xdt, rdt, hdt, ydt, dxdt, pdt, edt = case
    rng = np.random.default_rng(11)
    R, W = 67, 300
    x = jnp.asarray(rng.normal(size=(R, W)) + 2, xdt)
    res = None if rdt is None else jnp.asarray(rng.normal(size=(R, W)), rdt)
    scale, bias = jnp.asarray(1 + rng.normal(size=W) / 2, pdt), jnp.asarray(rng.normal(size=W), pdt)
    dy = jnp.asarray(rng.normal(size=(R, W)), xdt)
    dh = None if edt is None else jnp.asarray(rng.normal(size=(R, W)), edt)
    outs = []
    for mod in (native, norm_xla):
        y, h, mean, rstd = mod.norm_fwd(x, res, scale, bias, epsilon=EPS, rms=rms, out_dtype=ydt,
                                        residual_dtype=hdt)
        dx, ds, db = mod.norm_bwd(dy, x if h is None else h, mean, rstd, scale, dh, rms=rms, has_bias=True,
                                  dx_dtype=dxdt)
        outs.append(dict(y=y, h=h, mean=mean, rstd=rstd, dx=dx, dscale=ds, dbias=db))
    n, x_ = outs
    for k in n:
        if n[k] is None:
            assert x_[k] is None, k
            continue
        assert n[k].dtype == x_[k].dtype and n[k].shape == x_[k].shape, k
        a, b = np.asarray(n[k], np.float64), np.asarray(x_[k], np.float64)
        low = n[k].dtype != np.float32
        scale_k = max(1.0, float(np.max(np.abs(b))))
        tol = (2.0 ** -7 if n[k].dtype == BF16 else 2.0 ** -10) * scale_k if low else 3e-5 * scale_k
        assert np.max(np.abs(a - b)) <= tol, (k, float(np.max(np.abs(a - b))), tol)


def _fwd_bwd_native(x, scale, bias, dy):
    y, _, m, r = native.norm_fwd(x, None, scale, bias, epsilon=EPS, rms=False, out_dtype=x.dtype)
    return (y, m, r) + native.norm_bwd(dy, x, m, r, scale, None, rms=False, has_bias=True, dx_dtype=x.dtype)


def test_vmap_matches_loop():
    rng = np.random.default_rng(2)
    B, R, W = 3, 40, 130
    x = jnp.asarray(rng.normal(size=(B, R, W)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(B, R, W)), jnp.float32)
    scale = jnp.asarray(rng.normal(size=(W,)), jnp.float32)
    scales = jnp.asarray(rng.normal(size=(B, W)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(W,)), jnp.float32)
    got = jax.jit(jax.vmap(_fwd_bwd_native, in_axes=(0, None, None, 0)))(x, scale, bias, dy)
    got_s = jax.vmap(_fwd_bwd_native, in_axes=(0, 0, None, 0))(x, scales, bias, dy)  # batched params too
    for b in range(B):
        want = _fwd_bwd_native(x[b], scale, bias, dy[b])
        want_s = _fwd_bwd_native(x[b], scales[b], bias, dy[b])
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g[b]), np.asarray(w))
        for g, w in zip(got_s, want_s):
            np.testing.assert_array_equal(np.asarray(g[b]), np.asarray(w))
    # nested vmap: (2, B, R, W)
    x2 = jnp.stack([x, 2 * x])
    y2 = jax.vmap(jax.vmap(lambda a: native.norm_fwd(a, None, scale, None, epsilon=EPS, rms=True,
                                                     out_dtype=a.dtype)[0]))(x2)
    want = native.norm_fwd(x2[1, 2], None, scale, None, epsilon=EPS, rms=True, out_dtype=jnp.float32)[0]
    np.testing.assert_array_equal(np.asarray(y2[1, 2]), np.asarray(want))


def test_sharded_inputs():
    devs = np.array(jax.devices())
    if devs.size < 2:
        pytest.skip("needs several (fake) CPU devices")
    mesh = jax.sharding.Mesh(devs, ("d",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d", None))
    inp = make_inputs(8 * devs.size, 96, F32, seed=9)
    x = jax.device_put(jnp.asarray(inp["x"]), rows)
    dy = jax.device_put(jnp.asarray(inp["dy"]), rows)
    s, b = jnp.asarray(inp["scale"]), jnp.asarray(inp["bias"])
    f = jax.jit(_fwd_bwd_native)
    got = f(x, s, b, dy)
    want = _fwd_bwd_native(jnp.asarray(inp["x"]), s, b, jnp.asarray(inp["dy"]))
    for g, w in zip(got, want):  # dscale/dbias: per-device partial sums, psum-ed
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6)
    # partitioned, not replicated: each device keeps its rows (y, mean, rstd, dx) and nothing is gathered
    for k in (0, 1, 2, 3):
        assert got[k].sharding.spec[0] == "d", (k, got[k].sharding)
    hlo = f.lower(x, s, b, dy).compile().as_text()
    assert "all-gather" not in hlo and "all-reduce" in hlo


def test_unavailable_is_reported_not_raised(monkeypatch):
    monkeypatch.setenv("RNLIB_DISABLE_NATIVE", "1")
    ok, why = native._load()
    assert not ok and "RNLIB_DISABLE_NATIVE" in why
    monkeypatch.delenv("RNLIB_DISABLE_NATIVE")
    monkeypatch.setattr(native.importlib.util, "find_spec", lambda name: None)
    ok, why = native._load()
    assert not ok and "missing" in why
