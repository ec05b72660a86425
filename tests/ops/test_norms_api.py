"""Axes, transformations (jit/vmap/sharding/grad-of-grad), the stats LN, and every bad-input error."""
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rnlib.ops import add_norm, layer_norm, layer_norm_with_stats, rms_norm


def _rand(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


@pytest.mark.parametrize("reduction_axes,feature_axes", [
    (-1, -1), ((1, 2, 3), -1), ((1, 2, 3), (2, 3)), ((1, 2), -1), (1, 1), (-1, (-2, -1)), ((0, 2), (0, 2))])
def test_axes_match_flax_linen(reduction_axes, feature_axes):
    """Outputs and all gradients equal flax.linen.LayerNorm (exact variance) for Flax-style axes."""
    x = _rand((3, 5, 6, 7)) * 2 + 0.5
    mod = fnn.LayerNorm(reduction_axes=reduction_axes, feature_axes=feature_axes, use_fast_variance=False)
    params = mod.init(jax.random.key(0), x)
    params = jax.tree.map(lambda p: p + _rand(p.shape, seed=p.size), params)   # non-trivial scale/bias
    dy = _rand(x.shape, seed=3)

    def ours(x, p):
        return layer_norm(x, p["params"]["scale"], p["params"]["bias"], reduction_axes=reduction_axes,
                          feature_axes=feature_axes)
    y1, vjp1 = jax.vjp(ours, x, params)
    y2, vjp2 = jax.vjp(lambda x, p: mod.apply(p, x), x, params)
    np.testing.assert_allclose(y1, y2, rtol=2e-5, atol=2e-5)
    for a, b in zip(jax.tree.leaves(vjp1(dy)), jax.tree.leaves(vjp2(dy))):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)


def test_rms_axes_match_flax_linen():
    x = _rand((4, 6, 10))
    mod = fnn.RMSNorm(reduction_axes=(1, 2), feature_axes=-1)
    params = jax.tree.map(lambda p: p + 0.3, mod.init(jax.random.key(0), x))
    y = rms_norm(x, params["params"]["scale"], reduction_axes=(1, 2), feature_axes=-1)
    np.testing.assert_allclose(y, mod.apply(params, x), rtol=2e-5, atol=2e-5)


def _plain_ln_f64(x, s, b):
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-6) * s + b


def test_grad_of_grad_matches_autodiff_in_float64():
    """A gradient penalty (reverse over reverse) through the hand-written VJP equals plain autodiff."""
    with jax.enable_x64(True):
        x, s, b = _rand((4, 33), dtype=jnp.float64), 1 + _rand((33,), 1, jnp.float64), _rand((33,), 2, jnp.float64)
        w = _rand((4, 33), 3, jnp.float64)

        def penalty(fn):
            inner = jax.grad(lambda x, s, b: jnp.sum(jnp.tanh(fn(x, s, b)) * w), argnums=0)
            return jax.grad(lambda x, s, b: jnp.sum(inner(x, s, b) ** 2), argnums=(0, 1, 2))(x, s, b)
        for a, r in zip(penalty(layer_norm), penalty(_plain_ln_f64)):
            np.testing.assert_allclose(a, r, rtol=1e-9, atol=1e-10)


def test_stats_layer_norm_against_float64_autodiff():
    with jax.enable_x64(True):
        x = _rand((5, 3, 17), dtype=jnp.float64) * 3 + 2
        s, b = 1 + _rand((17,), 1, jnp.float64), _rand((17,), 2, jnp.float64)
        st = _rand((2, 17), 3, jnp.float64)

        def direct(x, s, b, st):
            mu = jnp.mean(x, -1, keepdims=True)
            sigma = jnp.sqrt(jnp.mean(jnp.square(x - mu), -1, keepdims=True) + 1e-6)
            return (x - mu) / sigma * s + b + st[0] * mu + st[1] * jnp.log(sigma)
        dy = _rand(x.shape, 4, jnp.float64)
        y1, v1 = jax.vjp(layer_norm_with_stats, x, s, b, st)
        y2, v2 = jax.vjp(direct, x, s, b, st)
        np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-10)
        for a, r in zip(v1(dy), v2(dy)):
            np.testing.assert_allclose(a, r, rtol=1e-9, atol=1e-10)
    # zero stats_scale is exactly plain LN on the same (XLA) backend
    x32 = _rand((4, 9))
    np.testing.assert_array_equal(layer_norm_with_stats(x32, None, None, jnp.zeros((2, 9))),
                                  layer_norm(x32, impl="xla"))


def test_jit_vmap_and_sharded_inputs():
    x, s, b = _rand((16, 4, 96)), 1 + _rand((96,), 1), _rand((96,), 2)
    f = lambda x: layer_norm(x, s, b)
    np.testing.assert_allclose(jax.vmap(f)(x), f(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(f)(x), f(x), rtol=1e-6, atol=1e-6)
    loss = lambda x, s, b: jnp.sum(jnp.sin(add_norm(x, x * 0.5, s, b)[0]))
    devices = np.array(jax.devices()[:8])
    assert devices.size == 8, "tests/conftest.py asks XLA for 8 host devices"
    mesh = Mesh(devices, ("data",))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    g_sharded = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(xs, s, b)
    g_single = jax.grad(loss, argnums=(0, 1, 2))(x, s, b)
    assert g_sharded[0].sharding.spec == P("data")
    for a, r in zip(g_sharded, g_single):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)


def _in_x64(fn):
    with jax.enable_x64(True):
        return fn()


@pytest.mark.parametrize("call,exc,match", [
    (lambda: layer_norm(jnp.arange(6).reshape(2, 3)), TypeError, "x must have a floating dtype"),
    (lambda: layer_norm(jnp.ones(())), ValueError, "scalar"),
    (lambda: layer_norm(jnp.ones((2, 3)), jnp.ones(4)), ValueError, r"scale has shape \(4,\).*needs \(3,\)"),
    (lambda: layer_norm(jnp.ones((2, 3)), None, jnp.ones((3, 1))), ValueError, r"bias has shape \(3, 1\)"),
    (lambda: layer_norm(jnp.ones((2, 3)), jnp.ones(3, jnp.int32)), TypeError, "scale must have a floating"),
    (lambda: layer_norm(jnp.ones((2, 3)), epsilon=0.0), ValueError, "epsilon must be finite and > 0"),
    (lambda: layer_norm(jnp.ones((2, 3)), epsilon=-1e-5), ValueError, "epsilon"),
    (lambda: layer_norm(jnp.ones((2, 3)), epsilon=float("nan")), ValueError, "epsilon"),
    (lambda: layer_norm(jnp.ones((2, 3)), epsilon=float("inf")), ValueError, "epsilon"),
    (lambda: jax.jit(lambda e: layer_norm(jnp.ones((2, 3)), epsilon=e))(1e-5), TypeError, "static"),
    (lambda: layer_norm(jnp.ones((2, 3)), reduction_axes=2), ValueError, "reduction_axes=2 is out of range"),
    (lambda: layer_norm(jnp.ones((2, 3)), feature_axes=(0, -2)), ValueError, "feature_axes.*repeats"),
    (lambda: layer_norm(jnp.ones((2, 3)), reduction_axes=()), ValueError, "at least one axis"),
    (lambda: layer_norm(jnp.ones((2, 0))), ValueError, "empty axes"),
    (lambda: layer_norm(jnp.ones((2, 3)), impl="cuda"), ValueError, "impl must be one of"),
    (lambda: layer_norm(jnp.ones((2, 3)), platform="metal"), ValueError, "platform must be"),
    (lambda: layer_norm(jnp.ones((2, 3)), dtype=jnp.int8), TypeError, "dtype must be a floating"),
    (lambda: add_norm(jnp.ones((2, 3)), jnp.ones((3, 2))), ValueError, r"residual has shape \(3, 2\).*\(2, 3\)"),
    (lambda: add_norm(jnp.ones((2, 3)), jnp.ones((2, 3), jnp.int32)), TypeError, "residual must have"),
    (lambda: add_norm(jnp.ones((2, 3)), jnp.ones((2, 3)), norm="batch"), ValueError, "norm must be one of"),
    (lambda: add_norm(jnp.ones((2, 3)), jnp.ones((2, 3)), None, jnp.ones(3), norm="rms"), ValueError, "no bias"),
    (lambda: add_norm(jnp.ones((2, 3)), None), ValueError, "needs a residual"),
    (lambda: layer_norm_with_stats(jnp.ones((2, 3)), None, None, jnp.ones((3,))), ValueError,
     r"stats_scale has shape \(3,\).*needs \(2, 3\)"),
    (lambda: layer_norm_with_stats(jnp.ones((2, 3)), None, None, jnp.ones((2, 3)), impl="pallas"), ValueError,
     "no pallas kernel"),
    (lambda: layer_norm_with_stats(jnp.ones((2, 3)), None, None, jnp.ones((2, 3)), impl="native"), ValueError,
     "no native kernel"),
    (lambda: layer_norm(jnp.ones((2, 3)), impl="native", platform="gpu"), ValueError, "CPU only|cannot run here"),
    (lambda: _in_x64(lambda: layer_norm(jnp.ones((2, 3), jnp.float64), impl="native")), ValueError,
     "impl='native' cannot run.*float32/bfloat16/float16 operands only, got float64"),
    (lambda: layer_norm(jnp.ones((2, 3)), epsilon=1e-40), ValueError, "epsilon=1e-40 is below the smallest normal"),
    (lambda: layer_norm(jnp.ones((2, 3)), epsilon=1e-39), ValueError, "below the smallest normal float32"),
])
def test_bad_input_raises_naming_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
