"""rnlib.models.build: CLI names -> models with the uniform interface model(x NHWC) -> logits; residual MLP."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rnlib.models as M
from rnlib import ops
from rnlib.ops import residual as R


def _count(model):
    return int(sum(np.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))))


@pytest.mark.parametrize("name,family,preact,plain,depth", [
    ("resnet20", "cifar", False, False, 20), ("plain56", "cifar", False, True, 56),
    ("preact_resnet164", "cifar", True, False, 164), ("resnet18", "imagenet", False, False, 18),
    ("resnet50", "imagenet", False, False, 50), ("cifar_resnet50", "cifar", False, False, 50),
    ("ImageNet-Plain34", "imagenet", False, True, 34), ("resmlp4", "mlp", False, False, 4),
])
def test_parse_name(name, family, preact, plain, depth):
    assert M.parse_name(name) == {"family": family, "preact": preact, "plain": plain, "depth": depth}


@pytest.mark.parametrize("name", ["resnet", "vgg16", "resnet20x", "cifar_resmlp4", "preact_resmlp4"])
def test_bad_names(name):
    with pytest.raises(ValueError, match="build"):
        M.parse_name(name)


@pytest.mark.parametrize("name,kw,count", [
    ("resnet20", {}, 269_722), ("plain110", {}, 1_727_962), ("resnet18", {}, 11_689_512),
    ("resnet50", {"num_classes": 1000}, 25_557_032),
])
def test_build_counts(name, kw, count):
    kw.setdefault("num_classes", 1000 if M.parse_name(name)["family"] == "imagenet" else 10)
    num_classes = kw.pop("num_classes")
    model = nnx.eval_shape(lambda: M.build(name, num_classes, nnx.Rngs(0), **kw))
    assert _count(model) == count


def test_build_forwards_options_and_runs():
    model = nnx.eval_shape(lambda: M.build("preact_resnet110", 100, nnx.Rngs(0), norm="layer", scan=False))
    assert model.name == "cifar_preact_resnet110" and model.heads[0].spec.norm == "layer"
    y = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert y.shape == (2, 100)


def test_residual_mlp_block_chain_is_prenorm_residual():
    """Chained residual-stream blocks equal x_{l+1} = x_l + MLP_l(LN(x_l)) written out directly."""
    stack = M.build("resmlp3", 5, nnx.Rngs(0), in_features=2 * 2 * 3, width=8).blocks
    x = R.normal(jax.random.key(1), (4, 8))
    h, r = stack(x, jnp.zeros_like(x))
    ref = x
    params = jax.tree.map(lambda v: v[...], stack.params, is_leaf=lambda v: isinstance(v, nnx.Variable))
    for i in range(3):
        p = jax.tree.map(lambda a: a[i], params)
        y = ops.layer_norm(ref, p["norm"]["scale"], p["norm"]["bias"])
        ref = ref + jax.nn.gelu(y @ p["dense1"]["kernel"] + p["dense1"]["bias"]) @ p["dense2"]["kernel"] \
            + p["dense2"]["bias"]
    np.testing.assert_allclose(h + r, ref, rtol=1e-5, atol=1e-5)


def test_residual_mlp_model_interface():
    model = M.build("resmlp2", 10, nnx.Rngs(0), in_features=4 * 4 * 3, width=16)
    y = nnx.jit(lambda m, x: m(x))(model, R.normal(jax.random.key(0), (2, 4, 4, 3)))
    assert y.shape == (2, 10) and bool(jnp.all(jnp.isfinite(y)))
    with pytest.raises(ValueError, match="resmlp2"):
        model(jnp.ones((2, 5, 5, 3)))
