"""NNX norm modules: drop-in swaps for Flax's (same parameter trees, same outputs), and the behaviours Flax's own
NNX tests check for LayerNorm/RMSNorm (NNX/linen equivalence with mask and dtypes, same graph for different
initializers, parameter metadata), run with rnlib's classes. Linen modules: tests/linen/."""
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


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.float16])
def test_nnx_linen_equivalence_with_mask(norm, dtype, param_dtype):
    """Flax's test_nnx_linen_{layernorm,rmsnorm}_equivalence: norm + Linear, NNX and linen bit for bit, with and
    without a mask, with rnlib's norms in both APIs."""
    nnx_cls, linen_cls = (rn.LayerNorm, rl.LayerNorm) if norm == "layer" else (rn.RMSNorm, rl.RMSNorm)
    x = jax.random.normal(jax.random.key(0), (10, 5))
    mask = np.array([True, False, True, False, True])

    class LinenModel(fnn.Module):
        @fnn.compact
        def __call__(self, x, *, mask=None):
            y = linen_cls(dtype=dtype, param_dtype=param_dtype, use_fast_variance=False)(x, mask=mask)
            return fnn.Dense(4, dtype=dtype, param_dtype=param_dtype)(y)

    variables = LinenModel().init(jax.random.key(1), x)
    norm_layer = nnx_cls(5, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False, rngs=nnx.Rngs(42))
    linear = nnx.Linear(5, 4, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(42))
    linear.kernel[...] = variables["params"]["Dense_0"]["kernel"]
    linear.bias[...] = variables["params"]["Dense_0"]["bias"]
    for m in (None, mask):
        out_linen = LinenModel().apply(variables, x, mask=m)
        out_nnx = linear(norm_layer(x, mask=m))
        assert isinstance(out_linen, jax.Array)
        np.testing.assert_array_equal(out_linen, out_nnx)


@pytest.mark.parametrize("cls,inits", [(rn.LayerNorm, ("scale_init", "bias_init")), (rn.RMSNorm, ("scale_init",))])
def test_same_graph_for_different_initializers(cls, inits):
    """Flax's TestLayersSameGraph: the graphdef does not depend on the initializers."""
    m1 = cls(3, rngs=nnx.Rngs(0), **{k: nnx.initializers.zeros for k in inits})
    m2 = cls(3, rngs=nnx.Rngs(0), **{k: nnx.initializers.ones for k in inits})
    assert nnx.graphdef(m1) == nnx.graphdef(m2)


@pytest.mark.parametrize("cls,names", [(rn.LayerNorm, ("scale", "bias")), (rn.RMSNorm, ("scale",)),
                                       (rn.AddNorm, ("scale", "bias")), (rn.StatsLayerNorm, ("scale", "bias"))])
def test_param_metadata(cls, names):
    """Flax's TestLayersParamsMetadata: ``{name}_metadata`` lands on the nnx.Param, under a mesh."""
    mesh = jax.make_mesh((1, 1), ("din", "dout"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    kwargs = {f"{n}_metadata": {"sharding_metadata": ("din",), "tag": n} for n in names}
    with jax.set_mesh(mesh):
        m = cls(3, rngs=nnx.Rngs(0), **kwargs)
    for n in names:
        p = getattr(m, n)
        assert isinstance(p, nnx.Param)
        assert p.sharding_metadata == ("din",) and p.tag == n


@pytest.mark.parametrize("cls", [rn.LayerNorm, rn.RMSNorm, rn.AddNorm, rn.StatsLayerNorm])
@pytest.mark.parametrize("bad", [0, -3, (4, 0)])
def test_non_positive_num_features_fails_at_construction(cls, bad):
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        cls(bad, rngs=nnx.Rngs(0))


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
    # mask: the XLA path on new_residual, same as LayerNorm(mask=...)(x + r)
    mask = jnp.arange(24) % 3 != 0
    ym, hm = m(x, r, mask=mask)
    np.testing.assert_array_equal(hm, h)
    np.testing.assert_allclose(ym, rn.LayerNorm(24, rngs=nnx.Rngs(0))(x + r, mask=mask), rtol=1e-6, atol=1e-6)

    s = rn.StatsLayerNorm(24, rngs=nnx.Rngs(0))
    assert s.stats_scale[...].shape == (2, 24) and not np.any(s.stats_scale[...])
    np.testing.assert_allclose(s(x), rn.LayerNorm(24, rngs=nnx.Rngs(0))(x), rtol=1e-6, atol=1e-6)
    s.stats_scale[...] = jnp.ones((2, 24))
    mu = jnp.mean(x, -1, keepdims=True)
    sigma = jnp.sqrt(jnp.var(x, -1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(s(x), (x - mu) / sigma + mu + jnp.log(sigma), rtol=1e-5, atol=1e-5)
    # an all-True mask takes the XLA path and gives the same answer
    np.testing.assert_allclose(s(x, mask=jnp.ones(24, bool)), s(x), rtol=1e-5, atol=1e-5)


def test_module_dtypes_and_jit():
    m = rn.LayerNorm(24, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    y = nnx.jit(lambda m, x: m(x))(m, _x())
    assert y.dtype == jnp.bfloat16 and m.scale[...].dtype == jnp.float32
    # Flax's rule with dtype=None: promotion of input and parameters
    m = rn.LayerNorm(24, rngs=nnx.Rngs(0))
    assert m(_x().astype(jnp.bfloat16)).dtype == jnp.float32
    assert rn.RMSNorm(24, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))(_x().astype(jnp.bfloat16)).dtype == jnp.bfloat16
    assert m(jnp.arange(48).reshape(2, 24)).dtype == jnp.float32
