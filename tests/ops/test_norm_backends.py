"""Every norm backend behind the one interface: same values and derivatives as the plain XLA maths (the base),
second order through each, and the choice ``impl="auto"`` makes (it never raises for a call XLA can serve)."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import norm_reference as ref
from rnlib import ops
from rnlib.ops import _backends

FUSED = [name for name in ("native", "pallas") if not ops.backend_unavailable(name)]


def _inputs(seed=0, shape=(9, 33)):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=shape) * 2 + 1, jnp.float32)
    s = jnp.asarray(1 + rng.normal(size=shape[-1]) / 3, jnp.float32)
    b = jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)
    w = jnp.asarray(rng.normal(size=shape), jnp.float32)
    return x, s, b, w


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_fused_backends_match_the_plain_maths_to_second_order(impl, norm):
    """grad of a gradient penalty through add_norm: needs the backward itself to be differentiable."""
    x, s, b, w = _inputs()
    bias = None if norm == "rms" else b

    def penalty(impl, x, r, s, b):
        def loss(x, r, s, b):
            y, h = ops.add_norm(x, r, s, b, norm=norm, impl=impl)
            return jnp.sum(jnp.sin(y) * w) + jnp.sum(jnp.cos(h) * w)
        grads = jax.grad(loss, argnums=(0, 1, 2, 3))(x, r, s, b)
        return sum(jnp.sum(g ** 2) for g in grads if g is not None)

    args = (x, x[::-1] * 0.5, s, bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pallas on CPU: the interpret-mode notice
        got = jax.jit(jax.grad(lambda *a: penalty(impl, *a), argnums=(0, 1, 2)))(*args)
    want = jax.jit(jax.grad(lambda *a: penalty("xla", *a), argnums=(0, 1, 2)))(*args)
    for g, v in zip(got, want):
        scale = float(jnp.max(jnp.abs(v)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(v), rtol=1e-4, atol=1e-5 * scale)


def test_second_order_matches_float64():
    """The plain maths' derivatives of the backward are the true ones (float64 autodiff of the formula)."""
    x, s, b, w = _inputs(1)

    def penalty(f, x, s, b, w):
        return jnp.sum(jax.grad(lambda x: jnp.sum(jnp.sin(f(x, s, b)) * w))(x) ** 2)

    def naive(x, s, b):
        m = jnp.mean(x, -1, keepdims=True)
        v = jnp.mean((x - m) ** 2, -1, keepdims=True)
        return (x - m) / jnp.sqrt(v + 1e-6) * s + b

    with jax.enable_x64(True):
        args64 = (a.astype(jnp.float64) for a in (x, s, b, w))
        want = np.asarray(jax.jit(jax.grad(lambda *a: penalty(naive, *a)))(*args64))
    got = np.asarray(jax.jit(jax.grad(lambda *a: penalty(lambda *c: ops.layer_norm(*c, impl="xla"), *a)))(x, s, b, w))
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4 * float(np.max(np.abs(want))))


@pytest.mark.parametrize("case", ["scale", "dtype", "residual", "residual_dtype"])
def test_auto_falls_back_to_xla_when_any_operand_is_float64(case):
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 16)) * 3 + 5, jnp.float32)
        s = jnp.linspace(0.5, 2.0, 16, dtype=jnp.float32)
        if case == "scale":
            y = ops.layer_norm(x, s.astype(jnp.float64))
        elif case == "dtype":
            y = ops.layer_norm(x, s, dtype=jnp.float64)
        elif case == "residual":
            y, h = ops.add_norm(x, x.astype(jnp.float64), s)
        else:
            y, h = ops.add_norm(x, x, s, residual_dtype=jnp.float64)
        h64 = np.asarray(x, np.float64) * (2 if case.startswith("residual") else 1)
        want = ref.norm_fwd(h64, np.asarray(s), eps=1e-6)
        assert y.dtype == (jnp.float64 if case == "dtype" else jnp.float32)
        if case.startswith("residual"):
            assert h.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=2e-5, atol=2e-5)
        with pytest.raises(ValueError, match="impl='native' cannot run.*got float64"):
            ops.layer_norm(x, s.astype(jnp.float64), impl="native", platform="cpu")


@pytest.mark.parametrize("impl", ["xla"] + FUSED)
def test_forward_values_do_not_depend_on_taking_a_gradient(impl):
    """Rows holding inf, and finite rows whose float32 sum of squares overflows, at >= 65536 elements."""
    x = np.random.default_rng(3).normal(size=(256, 512)).astype(np.float32)
    x[3, 7] = np.inf
    x[5, :] = 2e19
    x[9, 100] = -np.inf
    x = jnp.asarray(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        plain = jax.jit(lambda x: ops.layer_norm(x, impl=impl))(x)
        under_vjp = jax.jit(lambda x: jax.vjp(lambda x: ops.layer_norm(x, impl=impl), x)[0])(x)
        big = jnp.full((64, 1024), 2e19, jnp.float32)
        big_vjp, pull = jax.vjp(lambda x: ops.layer_norm(x, impl=impl), big)
    np.testing.assert_array_equal(np.asarray(under_vjp), np.asarray(plain))
    assert np.all(np.asarray(plain)[5] == 0) and np.all(np.isfinite(np.delete(np.asarray(plain), [3, 9], 0)))
    assert np.all(np.asarray(big_vjp) == 0)
    assert np.all(np.isfinite(np.asarray(pull(jnp.ones_like(big))[0])))


@pytest.mark.parametrize("impl", ["xla"] + FUSED)
def test_smallest_accepted_epsilon_keeps_constant_rows_finite(impl):
    eps = float(jnp.finfo(jnp.float32).tiny)
    x = jnp.full((2, 8), 3.0, jnp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        y, pull = jax.vjp(lambda x: ops.layer_norm(x, epsilon=eps, impl=impl), x)
        dx = pull(jnp.linspace(-1, 1, 16, dtype=jnp.float32).reshape(2, 8))[0]
    assert np.all(np.asarray(y) == 0)
    assert np.all(np.isfinite(np.asarray(dx)))
    with pytest.raises(ValueError, match="smallest normal float32"):
        ops.layer_norm(x, epsilon=eps / 2, impl=impl)


def test_pallas_on_cpu_warns_once_per_process(monkeypatch):
    monkeypatch.setattr(_backends, "_warned_interpret", False)
    x = jnp.ones((8, 128), jnp.float32)
    with pytest.warns(RuntimeWarning, match="interpret mode") as record:
        ops.layer_norm(x, impl="pallas", platform="cpu")
        ops.rms_norm(x, impl="pallas", platform="cpu")
    assert len([r for r in record if "interpret mode" in str(r.message)]) == 1
    assert record[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.layer_norm(x, impl="xla")
        ops.layer_norm(x)


def test_auto_choice_per_platform():
    spec = _backends.NormSpec(rows=8, width=128, rms=False, epsilon=1e-6, x_dtype=np.dtype(np.float32),
                              out_dtype=np.dtype(np.float32), platform="cpu")
    native_ok = not ops.backend_unavailable("native")
    assert _backends.choose("auto", spec) == ("native" if native_ok else "xla")
    for plat in ("gpu", "tpu"):
        assert _backends.choose("auto", spec.__class__(**{**spec.__dict__, "platform": plat})) == "pallas"
    stats = spec.__class__(**{**spec.__dict__, "with_stats": True})
    assert _backends.choose("auto", stats) == "xla"
    rows = spec.__class__(**{**spec.__dict__, "params_in_rows": True, "platform": "gpu"})
    assert _backends.choose("auto", rows) == "xla"
    with pytest.raises(ValueError, match="impl='pallas' cannot run this call: parameters vary across rows"):
        _backends.choose("pallas", rows)


def test_backend_unavailable_names():
    assert ops.backend_unavailable("pallas") == ""
    assert isinstance(ops.backend_unavailable("native"), str)
    with pytest.raises(ValueError, match="'native' or 'pallas'"):
        ops.backend_unavailable("xla")
