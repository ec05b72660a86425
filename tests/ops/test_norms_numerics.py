"""rnlib.ops norms against float64 references: outputs and every gradient, hostile inputs included."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import norm_reference as ref
from rnlib.ops import add_norm, layer_norm, rms_norm

# Relative rounding unit of each dtype: the tolerance of a result computed in float32 and rounded once.
ULP = {jnp.float32: 2.0 ** -23, jnp.bfloat16: 2.0 ** -8, jnp.float16: 2.0 ** -11}


def _data(rows, width, dtype, seed=0, offset=0.0, std=1.0):
    rng = np.random.default_rng(seed)
    x = (offset + std * rng.standard_normal((rows, width))).astype(np.float32)
    x = np.array(jnp.asarray(x, dtype).astype(jnp.float32))  # the values the dtype can hold
    scale = (1 + 0.5 * rng.standard_normal(width)).astype(np.float32)
    bias = (0.5 * rng.standard_normal(width)).astype(np.float32)
    dy = np.asarray(jnp.asarray(rng.standard_normal((rows, width)), dtype).astype(jnp.float32))
    return x, scale, bias, dy


def _assert_close(got, want, dtype, what, width=1):
    got = np.asarray(jnp.asarray(got).astype(jnp.float32), np.float64)
    if dtype == jnp.float32:
        # float32 statistics: error grows like sqrt(width) * ulp; scaled by the largest reference value.
        tol = 2e-6 * max(1.0, np.sqrt(width) / 8) * max(1.0, float(np.max(np.abs(want))))
        err = np.max(np.abs(got - want))
        assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"
    else:
        # computed in float32, rounded once to `dtype`: within ~1 rounding unit of each element.
        tol = 1.01 * ULP[dtype] * np.abs(want) + 1e-5 * max(1.0, float(np.max(np.abs(want))))
        bad = np.abs(got - want) > tol
        assert not bad.any(), f"{what}: {bad.sum()} elements off, worst {np.max(np.abs(got - want)):.3g}"


KINDS = ["layer", "rms", "add_layer", "add_rms"]


def _run(kind, x, scale, bias, dy, dres, dtype):
    """Forward + all gradients of one norm kind via jax.vjp; returns (outputs, grads)."""
    xs = jnp.asarray(x, dtype)
    if kind in ("layer", "rms"):
        if kind == "rms":
            y, vjp = jax.vjp(lambda x, s: rms_norm(x, s, impl="xla"), xs, scale)
            return (y,), vjp(jnp.asarray(dy, dtype)) + (None,)
        y, vjp = jax.vjp(lambda x, s, b: layer_norm(x, s, b, impl="xla"), xs, scale, bias)
        return (y,), vjp(jnp.asarray(dy, dtype))
    # split x into two summands so x + residual reproduces x exactly in float32
    r = jnp.asarray(x * 0.25, dtype)
    xa = jnp.asarray(x, jnp.float32) - r.astype(jnp.float32)
    norm = "layer" if kind == "add_layer" else "rms"

    def f(a, r, s, b):
        return add_norm(a, r, s, b if norm == "layer" else None, norm=norm, residual_dtype=jnp.float32,
                        dtype=dtype, impl="xla")
    out, vjp = jax.vjp(f, xa, r, scale, bias)
    return out, vjp((jnp.asarray(dy, dtype), jnp.asarray(dres, jnp.float32)))


def _check(kind, x, scale, bias, dy, dtype, dres=None):
    rms = kind.endswith("rms")
    width = x.shape[-1]
    if dres is None:
        dres = np.random.default_rng(7).standard_normal(x.shape).astype(np.float32)
    outs, grads = _run(kind, x, scale, bias, dy, dres, dtype)
    b = None if rms else bias
    _assert_close(outs[0], ref.norm_fwd(x, scale, b, rms=rms), dtype, "y", width)
    dx, dscale, dbias = ref.norm_bwd(x, dy, scale, rms=rms)
    if kind.startswith("add"):
        h = np.asarray(outs[1], np.float64)
        np.testing.assert_allclose(h, x, rtol=2e-7, atol=1e-7 * np.max(np.abs(x)))
        dx = dx + dres
        _assert_close(grads[0], dx, jnp.float32, "dx", width)   # add_norm's x here is float32
        _assert_close(grads[1], dx, dtype, "dresidual", width)
        grads = grads[1:]
    else:
        _assert_close(grads[0], dx, dtype, "dx", width)
    _assert_close(grads[1], dscale, jnp.float32, "dscale", x.shape[0])
    if not rms:
        _assert_close(grads[2], dbias, jnp.float32, "dbias", x.shape[0])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("width,rows", [(1, 5), (7, 37), (128, 16), (761, 9), (1153, 4), (4096, 3), (70001, 2)])
def test_f32_against_float64(kind, width, rows):
    _check(kind, *_data(rows, width, jnp.float32, seed=width), dtype=jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("width", [7, 761, 4096])
def test_low_precision_within_one_rounding(dtype, kind, width):
    _check(kind, *_data(6, width, dtype, seed=width + 1), dtype=dtype)


def test_bf16_beats_naive_same_dtype_computation():
    x, scale, bias, _ = _data(64, 1024, jnp.bfloat16, offset=3.0)
    y = layer_norm(jnp.asarray(x, jnp.bfloat16), scale.astype(jnp.bfloat16), bias.astype(jnp.bfloat16))
    err = np.max(np.abs(np.asarray(y.astype(jnp.float32), np.float64) - ref.norm_fwd(
        x, np.asarray(jnp.asarray(scale, jnp.bfloat16).astype(jnp.float32)),
        np.asarray(jnp.asarray(bias, jnp.bfloat16).astype(jnp.float32)))))
    naive = ref.naive_error(x, scale, bias, dtype=jnp.bfloat16)
    assert err <= 2 * naive + 1e-3, (err, naive)


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_large_mean_small_std(kind):
    # mean 1e4, std 1e-2: a float32 mean is off by ~10% of the std unless computed with care.
    _check(kind, *_data(16, 761, jnp.float32, offset=1e4, std=1e-2), dtype=jnp.float32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fill", [0.0, 3.25])
def test_hostile_constant_and_zero_rows(kind, fill):
    x, scale, bias, dy = _data(8, 1153, jnp.float32)
    x[2] = fill
    x[5] = fill
    _check(kind, x, scale, bias, dy, dtype=jnp.float32)
    y = layer_norm(jnp.asarray(x), scale, bias)
    np.testing.assert_array_equal(np.asarray(y)[2], bias)  # a constant row normalises to exactly 0


@pytest.mark.parametrize("fn", ["layer", "rms"])
def test_nan_propagates_to_its_row_only(fn):
    x, scale, bias, dy = _data(5, 761, jnp.float32)
    x[3, 100] = np.nan
    f = (lambda x: layer_norm(x, scale, bias)) if fn == "layer" else (lambda x: rms_norm(x, scale))
    y, vjp = jax.vjp(f, jnp.asarray(x))
    (dx,) = vjp(jnp.asarray(dy))
    y, dx = np.asarray(y), np.asarray(dx)
    assert np.isnan(y[3]).all() and np.isnan(dx[3]).all()
    keep = [0, 1, 2, 4]
    assert np.isfinite(y[keep]).all() and np.isfinite(dx[keep]).all()
    want = ref.norm_fwd(x[keep], scale, bias if fn == "layer" else None, rms=fn == "rms")
    np.testing.assert_allclose(y[keep], want, rtol=1e-5, atol=1e-5)


def test_float64_inputs_use_float64_statistics():
    with jax.enable_x64(True):
        x, scale, bias, dy = _data(7, 1153, jnp.float32, offset=1e3, std=1e-3)
        x = x + np.random.default_rng(1).standard_normal(x.shape) * 1e-4   # genuinely float64 values
        f = lambda x, s, b: layer_norm(x, s, b)
        y, vjp = jax.vjp(f, jnp.asarray(x, jnp.float64), jnp.asarray(scale, jnp.float64),
                         jnp.asarray(bias, jnp.float64))
        grads = vjp(jnp.asarray(dy, jnp.float64))
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(y), ref.norm_fwd(x, scale, bias), rtol=1e-9, atol=1e-9)
        for g, w in zip(grads, ref.norm_bwd(x, dy, scale)):
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-8, atol=1e-8 * np.max(np.abs(w)))


def test_output_and_residual_dtypes():
    x = jnp.ones((4, 32), jnp.bfloat16) * jnp.arange(32, dtype=jnp.bfloat16)
    assert layer_norm(x).dtype == jnp.bfloat16
    assert layer_norm(x, dtype=jnp.float32).dtype == jnp.float32
    y, h = add_norm(x, x, residual_dtype=jnp.float32)
    assert (y.dtype, h.dtype) == (jnp.bfloat16, jnp.float32)
    y, h = add_norm(x, x.astype(jnp.float32))
    assert (y.dtype, h.dtype) == (jnp.bfloat16, jnp.float32)  # promoted stream dtype by default
    g = jax.grad(lambda a, r: jnp.sum(add_norm(a, r, residual_dtype=jnp.float32)[0].astype(jnp.float32)),
                 argnums=(0, 1))(x, x)
    assert g[0].dtype == g[1].dtype == jnp.bfloat16


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows,width,dtype", [(999, 256, jnp.float32), (1024, 1024, jnp.float32),
                                              (999, 256, jnp.bfloat16)])
def test_many_rows(kind, rows, width, dtype):
    """Many rows: dscale/dbias sum ~1000 rows, so accumulation errors would show."""
    _check(kind, *_data(rows, width, dtype, seed=rows), dtype=dtype)
