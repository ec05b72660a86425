"""NNX and linen norm modules: drop-in swaps for Flax's (same parameter trees, same outputs)."""
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rnlib.linen as rl
import rnlib.nn as rn


def _x(shape=(4, 5, 24), seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * 3 + 1, jnp.float32)


def _perturb(tree):
    return jax.tree.map(lambda p: p + 0.1 * jnp.arange(p.size, dtype=p.dtype).reshape(p.shape) / p.size, tree)


@pytest.mark.parametrize("ours,theirs,kw", [
    (rn.LayerNorm, nnx.LayerNorm, dict(use_fast_variance=False)),
    (rn.LayerNorm, nnx.LayerNorm, dict(use_fast_variance=False, use_bias=False, epsilon=1e-3)),
    (rn.RMSNorm, nnx.RMSNorm, dict()),
    (rn.RMSNorm, nnx.RMSNorm, dict(use_scale=False)),
])
def test_nnx_swap_keeps_state_and_output(ours, theirs, kw):
    flax_mod = theirs(24, rngs=nnx.Rngs(0), **kw)
    nnx.update(flax_mod, _perturb(nnx.state(flax_mod, nnx.Param)))
    mine = ours(24, rngs=nnx.Rngs(1), **kw)
    # A Flax checkpoint loads into rnlib's module unchanged: same tree, same shapes.
    state = nnx.state(flax_mod, nnx.Param)
    assert jax.tree.structure(state) == jax.tree.structure(nnx.state(mine, nnx.Param))
    nnx.update(mine, state)
    x = _x()
    np.testing.assert_allclose(mine(x), flax_mod(x), rtol=2e-5, atol=2e-5)
    gm = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(mine)
    gf = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(flax_mod)
    for a, b in zip(jax.tree.leaves(gm), jax.tree.leaves(gf)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ours,theirs,kw", [
    (rl.LayerNorm, fnn.LayerNorm, dict(use_fast_variance=False)),
    (rl.LayerNorm, fnn.LayerNorm, dict(use_fast_variance=False, reduction_axes=(1, 2), feature_axes=-1)),
    (rl.RMSNorm, fnn.RMSNorm, dict()),
])
def test_linen_swap_keeps_params_and_output(ours, theirs, kw):
    x = _x()
    params = _perturb(theirs(**kw).init(jax.random.key(0), x))
    assert jax.tree.structure(params) == jax.tree.structure(ours(**kw).init(jax.random.key(0), x))
    np.testing.assert_allclose(ours(**kw).apply(params, x), theirs(**kw).apply(params, x), rtol=2e-5, atol=2e-5)


def test_nnx_and_linen_add_norm_and_stats():
    x, r = _x(seed=1), _x(seed=2)
    m = rn.AddNorm(24, rngs=nnx.Rngs(0))
    y, h = m(x, r)
    np.testing.assert_allclose(h, x + r, rtol=1e-6)
    np.testing.assert_allclose(y, rn.LayerNorm(24, rngs=nnx.Rngs(0))(x + r), rtol=1e-6, atol=1e-6)
    assert set(nnx.state(rn.AddNorm(24, norm="rms", rngs=nnx.Rngs(0)), nnx.Param).keys()) == {"scale"}
    lp = rl.AddNorm().init(jax.random.key(0), x, r)
    y2, _ = rl.AddNorm().apply(lp, x, r)
    np.testing.assert_allclose(y2, y, rtol=1e-6, atol=1e-6)

    s = rn.StatsLayerNorm(24, rngs=nnx.Rngs(0))
    assert s.stats_scale[...].shape == (2, 24) and not np.any(s.stats_scale[...])
    np.testing.assert_allclose(s(x), rn.LayerNorm(24, rngs=nnx.Rngs(0))(x), rtol=1e-6, atol=1e-6)
    s.stats_scale[...] = jnp.ones((2, 24))
    mu = jnp.mean(x, -1, keepdims=True)
    sigma = jnp.sqrt(jnp.var(x, -1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(s(x), (x - mu) / sigma + mu + jnp.log(sigma), rtol=1e-5, atol=1e-5)
    ls = rl.StatsLayerNorm().init(jax.random.key(0), x)
    assert ls["params"]["stats_scale"].shape == (2, 24)


def test_module_dtypes_and_jit():
    m = rn.LayerNorm(24, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    y = nnx.jit(lambda m, x: m(x))(m, _x())
    assert y.dtype == jnp.bfloat16 and m.scale[...].dtype == jnp.float32
