"""CIFAR / ImageNet ResNets and plain twins: parameter counts, shapes, shortcuts, modes, scan, input checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnlib.models import cifar_resnet, imagenet_resnet
from rnlib.ops import residual as R


def _count(model, kernels_only=False):
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return int(sum(np.prod(v.shape) for k, v in flat if not kernels_only or k[-1] == "kernel"))


def _abstract(builder, *args, **kw):
    return nnx.eval_shape(lambda: builder(*args, rngs=nnx.Rngs(0), **kw))  # shapes only, nothing computed


def _cifar_count_by_hand(depth, classes=10):
    """Table 6 architecture, counted independently: 3x3 convs without bias, BN scale+bias, option A shortcuts."""
    n = (depth - 2) // 6
    total = 3 * 3 * 3 * 16 + 2 * 16                     # stem conv + BN
    cin = 16
    for w in (16, 32, 64):
        for _ in range(n):
            total += 9 * cin * w + 9 * w * w + 4 * w     # two convs, two BNs
            cin = w
    return total + 64 * classes + classes                # linear layer


@pytest.mark.parametrize("depth,paper_millions", [(20, "0.27"), (32, "0.46"), (44, "0.66"), (56, "0.85"),
                                                  (110, "1.7"), (1202, "19.4")])
def test_cifar_param_counts_match_he_2015_table6(depth, paper_millions):
    res = _count(_abstract(cifar_resnet, depth))
    plain = _count(_abstract(cifar_resnet, depth, plain=True))
    assert res == _cifar_count_by_hand(depth)
    assert plain == res  # option A shortcuts have no parameters: the twins match exactly
    decimals = len(paper_millions.split(".")[1])
    assert f"{round(res / 1e6, decimals):.{decimals}f}" == paper_millions


def test_cifar_preact_bottleneck_counts_match_he_2016():
    # He et al. 2016 Table: pre-act ResNet-164 1.7M, ResNet-1001 10.2M. The 10.2M counts the convolution and
    # linear weights; with BN scales/biases ResNet-1001 has 10,327,706 parameters.
    m164 = _abstract(cifar_resnet, 164, preact=True)
    m1001 = _abstract(cifar_resnet, 1001, preact=True)
    assert m164.heads[0].spec.kind == "bottleneck" and m164.heads[0].spec.projects
    assert round(_count(m164) / 1e6, 1) == 1.7
    assert round(_count(m1001, kernels_only=True) / 1e6, 1) == 10.2
    assert _count(m1001) == 10_327_706


TORCHVISION = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


@pytest.mark.parametrize("depth", sorted(TORCHVISION))
def test_imagenet_param_counts_equal_torchvision(depth):
    model = _abstract(imagenet_resnet, depth)
    assert _count(model) == TORCHVISION[depth]
    # The plain twin lacks exactly the projection shortcuts (1x1 conv + BN) of the stages that change shape.
    proj = sum(h.spec.in_features * h.spec.out_features + 2 * h.spec.out_features
               for h in model.heads if h.spec.projects)
    assert proj > 0
    assert _count(_abstract(imagenet_resnet, depth, plain=True)) == TORCHVISION[depth] - proj


@pytest.mark.parametrize("builder,depth,kw,hw,out", [
    (cifar_resnet, 20, {}, 32, 10),
    (cifar_resnet, 110, {"plain": True}, 32, 10),
    (cifar_resnet, 164, {"preact": True, "num_classes": 100}, 32, 100),
    (cifar_resnet, 20, {"norm": "layer", "shortcut": "C"}, 8, 10),
    (imagenet_resnet, 18, {}, 224, 1000),
    (imagenet_resnet, 50, {"preact": True, "num_classes": 7}, 64, 7),
    (imagenet_resnet, 152, {}, 224, 1000),
])
def test_output_shapes(builder, depth, kw, hw, out):
    model = _abstract(builder, depth, **kw)
    y = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, hw, hw, 3), jnp.float32))
    assert y.shape == (2, out) and y.dtype == jnp.float32


def test_forward_runs_and_bf16_compute():
    model = cifar_resnet(8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = R.normal(jax.random.key(1), (2, 8, 8, 3))
    y = nnx.jit(lambda m, x: m(x))(model, x)
    assert y.shape == (2, 10) and y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y)))
    assert model.heads[0].params["conv1"]["kernel"][...].dtype == jnp.float32  # parameters stay float32


def _zero_first_block_output_conv(model):
    k = model.heads[0].params["conv2"]["kernel"]
    k.set_value(jnp.zeros_like(k[...]))


def test_plain_twin_has_no_shortcut():
    """Zero one block's last conv: a plain net's output becomes constant in x, a ResNet's does not.

    Fails if any identity/projection path survives in the plain net (the first block would pass x on)."""
    x1, x2 = R.normal(jax.random.key(1), (2, 8, 8, 3)), R.normal(jax.random.key(2), (2, 8, 8, 3))
    forward = nnx.jit(lambda m, x: m(x))
    diffs = {}
    for plain in (True, False):
        model = cifar_resnet(14, plain=plain, rngs=nnx.Rngs(0))
        _zero_first_block_output_conv(model)
        model.eval()
        diffs[plain] = float(jnp.max(jnp.abs(forward(model, x1) - forward(model, x2))))
        names = {k for h in model.heads for k in h.params}
        assert ("proj_conv" in names) is False  # option A / plain: no projections either way
        assert {h.spec.shortcut for h in model.heads} == ({"none"} if plain else {"A"})
    assert diffs[True] == 0.0
    assert diffs[False] > 1e-3


def test_scan_equals_unrolled_model_train_mode():
    x = R.normal(jax.random.key(1), (2, 8, 8, 3))
    outs, stats = [], []
    for scan in (True, False):
        model = cifar_resnet(14, scan=scan, rngs=nnx.Rngs(0))  # same seeds -> same parameters
        outs.append(nnx.jit(lambda m, x: m(x))(model, x))
        stats.append(nnx.state(model, nnx.BatchStat))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), stats[0], stats[1])


def test_train_eval_modes():
    model = cifar_resnet(14, rngs=nnx.Rngs(0))
    x = R.normal(jax.random.key(1), (3, 8, 8, 3))
    forward = nnx.jit(lambda m, x: m(x))
    snapshot = lambda: jax.tree.map(jnp.asarray, nnx.state(model, nnx.BatchStat))  # copies, not the variables
    before = snapshot()
    forward(model, x)  # NNX modules start in training mode, like nnx.BatchNorm
    after = snapshot()
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)
    assert all(jax.tree.leaves(moved))  # every BatchNorm's statistics moved, stacked ones included
    model.eval()
    assert model.stacks[1].use_running_average and model.stem.use_running_average
    y = forward(model, x)
    jax.tree.map(np.testing.assert_array_equal, after, snapshot())
    other = x.at[1:].set(R.normal(jax.random.key(9), (2, 8, 8, 3)))  # same shape: no recompilation
    np.testing.assert_allclose(forward(model, other)[:1], y[:1], rtol=1e-5, atol=1e-5)  # per-example at eval
    model.train()
    assert not model.stacks[1].use_running_average


@pytest.mark.parametrize("builder,name,x,match", [
    (cifar_resnet, "cifar_resnet8", jnp.ones((8, 8, 3)), "rank 4"),
    (cifar_resnet, "cifar_resnet8", jnp.ones((1, 8, 8, 1)), "3 input channels"),
    (cifar_resnet, "cifar_resnet8", jnp.ones((1, 2, 8, 3)), "smaller than"),
    (cifar_resnet, "cifar_resnet8", jnp.ones((1, 8, 8, 3), jnp.int32), "floating"),
    (imagenet_resnet, "imagenet_resnet18", jnp.ones((1, 16, 16, 3)), "need H, W >= 32"),
])
def test_input_checks_name_the_model(builder, name, x, match):
    model = _abstract(builder, 8 if builder is cifar_resnet else 18)
    with pytest.raises((ValueError, TypeError), match=match) as err:
        model(x)
    assert name in str(err.value)


def test_bad_depths():
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="9n\\+2"):
        cifar_resnet(22, bottleneck=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="depth=19"):
        imagenet_resnet(19, rngs=nnx.Rngs(0))


def _finite_grads(depth, plain):
    model = cifar_resnet(depth, plain=plain, rngs=nnx.Rngs(0))
    x = R.normal(jax.random.key(1), (2, 8, 8, 3))
    labels = jnp.array([1, 7])

    def loss(m):
        logits = m(x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    grads = nnx.jit(nnx.grad(loss))(model)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    # The signal reaches the very first layer (a ResNet's shortcuts carry it through any depth).
    return float(jnp.linalg.norm(grads.stem.kernel[...]))


@pytest.mark.slow  # paper-scale depth
def test_finite_gradients_plain110():
    assert _finite_grads(110, plain=True) >= 0.0  # finite; the plain net's first-layer gradient may be tiny


@pytest.mark.slow  # paper-scale depth
def test_finite_gradients_resnet1202():  # ~18 s CPU here: one grad compilation (scan) + 1202 layers fwd/bwd
    assert _finite_grads(1202, plain=False) > 0.0
