"""Per-layer gradient norms on pytrees and NNX models."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnlib.diagnostics import grad_norms, ordered_values, param_grad_norms, tree_paths


def test_grouping_by_module_leaf_and_prefix():
    g = {"a": {"kernel": jnp.full((2, 2), 1.0), "bias": jnp.full((2,), 2.0)}, "b": {"kernel": jnp.array([3.0, 4.0])}}
    by_mod = grad_norms(g)
    assert by_mod == pytest.approx({"a": np.sqrt(4 + 8), "b": 5.0})
    by_leaf = grad_norms(g, group="leaf")
    assert by_leaf == pytest.approx({"a/bias": np.sqrt(8), "a/kernel": 2.0, "b/kernel": 5.0})
    assert grad_norms(g, group=lambda p: ("all",)) == pytest.approx({"all": np.sqrt(4 + 8 + 25)})
    with pytest.raises(ValueError, match="group"):
        grad_norms(g, group=0)


def test_unstack_splits_scan_stacked_layers():
    rng = np.random.default_rng(0)
    k = rng.normal(size=(5, 3, 3))
    b = rng.normal(size=(5, 3))
    g = {"stem": {"kernel": jnp.ones((2, 3))}, "blocks": {"conv": {"kernel": k, "bias": b}}}
    out = grad_norms(g, unstack=lambda p: 1 if p[0] == "blocks" else None)
    assert list(out) == ["blocks/0/conv", "blocks/1/conv", "blocks/2/conv", "blocks/3/conv", "blocks/4/conv", "stem"]
    want = np.sqrt(np.sum(k**2, axis=(1, 2)) + np.sum(b**2, axis=1))
    np.testing.assert_allclose(ordered_values(out)[:5], want, rtol=1e-6)


def test_relative_norms_of_quadratic_loss_are_one():
    params = {"l0": {"w": jnp.arange(1.0, 5.0)}, "l1": {"w": -jnp.ones(3) * 2}}
    grads = jax.grad(lambda p: 0.5 * sum(jnp.sum(v["w"] ** 2) for v in p.values()))(params)
    rel = grad_norms(grads, relative_to=params)
    assert rel == pytest.approx({"l0": 1.0, "l1": 1.0})


class _Net(nnx.Module):
    def __init__(self, depth, rngs):
        self.inp = nnx.Linear(4, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(depth)])
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        h = self.bn(jax.nn.relu(self.inp(x)))
        for layer in self.layers:
            h = jax.nn.relu(layer(h))
        return self.out(h)[:, 0]


def test_nnx_model_norms_match_manual_grad_and_have_no_side_effects():
    model = _Net(11, nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 4))
    y = jax.random.normal(jax.random.PRNGKey(2), (16,))
    loss_fn = lambda m, x, y: jnp.mean((m(x) - y) ** 2)  # noqa: E731
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    loss, norms = param_grad_norms(model, loss_fn, x, y)
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, before, after)

    grads = nnx.jit(nnx.grad(loss_fn))(model, x, y)
    assert loss == pytest.approx(float(nnx.jit(loss_fn)(model, x, y)), rel=1e-6)
    # Integer keys sort numerically, so layer 10 follows layer 9.
    layer_keys = [f"layers/{i}" for i in range(11)]
    assert [k for k in norms if k.startswith("layers")] == layer_keys
    for i in (0, 10):
        lg = grads["layers"][i]
        want = np.sqrt(np.sum(np.asarray(lg["kernel"][...]) ** 2) + np.sum(np.asarray(lg["bias"][...]) ** 2))
        assert norms[f"layers/{i}"] == pytest.approx(want, rel=1e-5)
    assert set(norms) == {"inp", "bn", "out", *layer_keys}
    _, rel = param_grad_norms(model, loss_fn, x, y, relative=True)
    assert rel["layers/3"] == pytest.approx(norms["layers/3"] / np.sqrt(
        np.sum(np.asarray(model.layers[3].kernel[...]) ** 2) + np.sum(np.asarray(model.layers[3].bias[...]) ** 2)
    ), rel=1e-5)


def test_tree_paths_drop_nnx_value_suffix():
    model = _Net(1, nnx.Rngs(0))
    paths = [p for p, _ in tree_paths(nnx.state(model, nnx.Param))]
    assert ("layers", "0", "kernel") in paths
