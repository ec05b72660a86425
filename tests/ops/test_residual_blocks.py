"""Residual block maths (rnlib.ops.residual) and the NNX/linen block wrappers.

The block is checked against the same block assembled from flax's own Conv and BatchNorm layers, so an error in
the shared ops (padding, stride placement, norm order, statistics update) cannot hide behind itself.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from rnlib.linen import blocks as lblocks
from rnlib.nn.blocks import BottleneckBlock, ResidualBlock, ResidualStack
from rnlib.ops import residual as R


def _x(shape, seed=0):
    return R.normal(jax.random.key(seed), shape)  # fixed-shape draws: no per-shape random-bits compilation


def _randomise(params, seed=1):
    """Random values for every parameter (so that zero/one inits cannot mask a wrong norm or order)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [1.0 + 0.3 * R.normal(k, a.shape) if a.ndim == 1 else
                                     0.2 * R.normal(k, a.shape) for k, a in zip(keys, leaves)])


def _flax_block(params, state, x, spec, train):
    """The block built from flax.nnx.Conv / nnx.BatchNorm, for post ("v1") and pre ("v2") orders."""
    rngs = nnx.Rngs(0)
    new_state = {}

    def conv(name, h, stride):
        k = params[name]["kernel"]
        c = nnx.Conv(k.shape[2], k.shape[3], k.shape[:2], stride, padding=[(k.shape[0] // 2,) * 2] * 2,
                     use_bias=False, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)
        c.kernel.set_value(k)
        return c(h)

    def bn(name, h):
        b = nnx.BatchNorm(h.shape[-1], momentum=spec.momentum, epsilon=spec.epsilon, use_running_average=not train,
                          rngs=rngs)
        b.scale.set_value(params[name]["scale"])
        b.bias.set_value(params[name]["bias"])
        b.mean.set_value(state[name]["mean"])
        b.var.set_value(state[name]["var"])
        y = b(h)
        new_state[name] = {"mean": b.mean[...], "var": b.var[...]}
        return y

    n = len(spec.convs())
    strides = [c[3] for c in spec.convs()]
    h = x
    if spec.order == "post":
        for i in range(1, n + 1):
            h = bn(f"norm{i}", conv(f"conv{i}", h, strides[i - 1]))
            h = jax.nn.relu(h) if i < n else h
        sc = bn("proj_norm", conv("proj_conv", x, spec.stride)) if spec.projects else x
        return jax.nn.relu(h + sc), new_state
    pre = None
    for i in range(1, n + 1):
        h = jax.nn.relu(bn(f"norm{i}", h))
        pre = h if i == 1 else pre
        h = conv(f"conv{i}", h, strides[i - 1])
    sc = conv("proj_conv", pre, spec.stride) if spec.projects else x
    return h + sc, new_state


@pytest.mark.parametrize("kind,order,stride,cin,features", [
    ("basic", "post", 2, 4, 8),        # v1 with a projection (option B) and stride
    ("bottleneck", "post", 2, 8, 4),   # v1.5: stride on the 3x3, 1x1 projection
    ("basic", "pre", 2, 4, 8),         # v2: projection reads the pre-activated input
    ("bottleneck", "pre", 1, 16, 4),   # v2 identity shortcut
])
def test_block_matches_flax_layers(kind, order, stride, cin, features):
    spec = R.BlockSpec(cin, features, kind=kind, order=order, shortcut="B", stride=stride)
    params, state = R.block_init(jax.random.key(0), spec)
    params = _randomise(params)
    state = jax.tree.map(lambda a: a + 0.5, state)
    x = _x((3, 7, 7, cin))  # odd spatial size: padding and stride must agree with flax's explicit padding

    @jax.jit  # one compilation for all four evaluations (eager dispatch compiles every op separately)
    def both(params, state, x):
        return [(R.residual_block(params, state, x, spec, train=t), _flax_block(params, state, x, spec, t))
                for t in (True, False)]

    for train, ((y, new_state), (y_ref, state_ref)) in zip((True, False), both(params, state, x)):
        out_hw = -(-7 // stride)
        assert y.shape == (3, out_hw, out_hw, spec.out_features)
        np.testing.assert_allclose(y, y_ref, rtol=2e-5, atol=2e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_state, state_ref)
        if not train:
            jax.tree.map(np.testing.assert_array_equal, new_state, state)


def test_bottleneck_stride_sits_on_the_3x3():
    spec = R.BlockSpec(8, 4, kind="bottleneck", stride=2)
    assert [(k, s) for k, _, _, s in spec.convs()] == [(1, 1), (3, 2), (1, 1)]
    assert spec.out_features == 16


def test_option_a_subsamples_and_pads_zeros():
    x = _x((2, 5, 5, 3)) + 3.0  # no zeros in x itself
    y = R.shortcut_a(x, 7, 2)
    assert y.shape == (2, 3, 3, 7)
    np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., 3:], 0.0)
    # Inside a block: with the branch switched off (branch scale 0), the output is exactly the padded shortcut.
    spec = R.BlockSpec(3, 7, order="pre", shortcut="A", stride=2, branch_scale=True)
    params, state = R.block_init(jax.random.key(0), spec)
    assert "proj_conv" not in params  # option A has no parameters
    out, _ = R.residual_block(params, state, x, spec, train=True)
    np.testing.assert_array_equal(out, y)


@pytest.mark.parametrize("option", ["zero_init_last", "branch_scale"])
@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
def test_preact_zero_branch_is_identity_at_init(option, kind):
    block = ResidualBlock(16, 16 if kind == "basic" else 4, kind=kind, order="pre", **{option: True},
                          rngs=nnx.Rngs(0))
    x = _x((2, 6, 6, 16))
    np.testing.assert_array_equal(block(x), x)
    # ... and not the identity once the branch is switched on (the test can fail).
    if option == "branch_scale":
        block.params["branch_scale"].set_value(jnp.ones(()))
    else:
        last = "conv2" if kind == "basic" else "conv3"
        block.params[last]["kernel"].set_value(_x(block.params[last]["kernel"].shape, 3))
    assert float(jnp.max(jnp.abs(block(x) - x))) > 1e-2


def test_post_zero_init_last_zeroes_the_last_norm_scale():
    spec = R.BlockSpec(8, 8, zero_init_last=True)
    params, state = R.block_init(jax.random.key(0), spec)
    np.testing.assert_array_equal(params["norm2"]["scale"], 0.0)
    x = _x((2, 5, 5, 8))
    y, _ = R.residual_block(params, state, x, spec, train=True)
    np.testing.assert_array_equal(y, jax.nn.relu(x))  # relu(0 + x)


def test_plain_block_has_no_shortcut():
    """shortcut="none": zero the last conv and the output no longer depends on x; a residual block still does."""
    x1, x2 = _x((2, 5, 5, 8), 1), _x((2, 5, 5, 8), 2)
    outs = {}
    for shortcut in ("none", "A"):
        spec = R.BlockSpec(8, 8, shortcut=shortcut, norm="none")
        params, state = R.block_init(jax.random.key(0), spec)
        params["conv2"]["kernel"] = jnp.zeros_like(params["conv2"]["kernel"])
        outs[shortcut] = [R.residual_block(params, state, x, spec, train=True)[0] for x in (x1, x2)]
    np.testing.assert_array_equal(outs["none"][0], outs["none"][1])
    assert float(jnp.max(jnp.abs(outs["A"][0] - outs["A"][1]))) > 0.1


@pytest.mark.parametrize("norm", ["layer", "rms", "stats"])
def test_block_with_layer_norms(norm):
    """norm="layer"/"rms"/"stats": the norm is rnlib.ops' over channels, per position (checked for "layer")."""
    spec = R.BlockSpec(4, 4, norm=norm, order="post", shortcut="A")
    params, state = R.block_init(jax.random.key(0), spec)
    assert state == {}
    params = _randomise(params)
    x = _x((2, 5, 5, 4))
    y, _ = R.residual_block(params, state, x, spec, train=True)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    if norm == "layer":
        def ln(h, p):
            m = h.mean(-1, keepdims=True)
            v = ((h - m) ** 2).mean(-1, keepdims=True)
            return (h - m) / jnp.sqrt(v + spec.epsilon) * p["scale"] + p["bias"]
        h = jax.nn.relu(ln(R.conv2d(x, params["conv1"]["kernel"]), params["norm1"]))
        h = ln(R.conv2d(h, params["conv2"]["kernel"]), params["norm2"])
        np.testing.assert_allclose(y, jax.nn.relu(h + x), rtol=1e-4, atol=1e-5)


def test_stack_scan_equals_unrolled_and_single_blocks():
    stack = ResidualStack(3, 8, rngs=nnx.Rngs(0))
    for k in ("norm1", "norm2"):  # non-trivial BN parameters so the three blocks differ in every way
        stack.params[k]["scale"].set_value(1.0 + 0.2 * _x((3, 8), 5))
        stack.params[k]["bias"].set_value(0.1 * _x((3, 8), 6))
    x = _x((2, 6, 6, 8))
    blocks = [stack.block(i) for i in range(3)]
    y_scan = stack(x)
    stats_scan = jax.tree.map(lambda v: v[...], stack.batch_stats)
    stack2 = ResidualStack(3, 8, scan=False, rngs=nnx.Rngs(0))
    nnx.update(stack2, nnx.state(stack, nnx.Param))
    y_loop = stack2(x)
    h = x
    for b in blocks:
        h = b(h)
    np.testing.assert_allclose(y_scan, y_loop, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_scan, h, rtol=1e-5, atol=1e-5)
    for i, b in enumerate(blocks):  # running statistics updated per block, identically
        for k in ("norm1", "norm2"):
            np.testing.assert_allclose(stats_scan[k]["mean"][i], b.batch_stats[k]["mean"][...], rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_allclose(stack2.batch_stats[k]["var"][i], b.batch_stats[k]["var"][...], rtol=1e-5)


def test_remat_stack_same_values_and_grads():
    stack = ResidualStack(2, 4, norm="none", rngs=nnx.Rngs(0))
    rem = ResidualStack(2, 4, norm="none", remat=True,
                        remat_policy=jax.checkpoint_policies.nothing_saveable, rngs=nnx.Rngs(0))
    x = _x((1, 4, 4, 4))
    g1 = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(stack)
    g2 = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(rem)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g1, g2)


def test_train_eval_modes_and_running_stats():
    block = BottleneckBlock(8, 2, stride=2, rngs=nnx.Rngs(0))
    x = _x((4, 6, 6, 8))
    before = jax.tree.map(lambda v: v[...], block.batch_stats)
    block(x)  # train mode by default: running statistics move
    after = jax.tree.map(lambda v: v[...], block.batch_stats)
    assert not np.allclose(before["norm1"]["mean"], after["norm1"]["mean"])
    assert set(after) == {"norm1", "norm2", "norm3", "proj_norm"}
    block.eval()
    y_batch = block(x)
    jax.tree.map(np.testing.assert_array_equal, after, jax.tree.map(lambda v: v[...], block.batch_stats))
    np.testing.assert_allclose(block(x[:1]), y_batch[:1], rtol=1e-5, atol=1e-6)  # per-example at eval
    block.train()
    assert not np.allclose(block(x[:1]), y_batch[:1], atol=1e-3)  # batch statistics again


def test_spec_validation():
    with pytest.raises(ValueError, match="shortcut"):
        R.BlockSpec(8, 8, shortcut="D")
    with pytest.raises(ValueError, match="norm"):
        R.BlockSpec(8, 8, norm="group")
    with pytest.raises(ValueError, match="cannot shrink"):
        R.BlockSpec(16, 8, shortcut="A")
    with pytest.raises(ValueError, match="keep the shape"):
        R.stack_init(jax.random.key(0), R.BlockSpec(8, 16), 2)
    block = ResidualBlock(8, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="8 input channels"):
        block(jnp.ones((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="rank 4"):
        block(jnp.ones((4, 4, 8)))


def test_linen_block_equals_nnx_block():
    x = _x((2, 6, 6, 8))
    nblock = ResidualBlock(8, 16, stride=2, shortcut="B", rngs=nnx.Rngs(0))
    lblock = lblocks.ResidualBlock(16, stride=2, shortcut="B")
    variables = lblock.init(jax.random.key(1), x, use_running_average=False)
    assert jax.tree.map(jnp.shape, variables["params"]) == jax.tree.map(lambda v: v.shape, dict(nblock.params),
                                                                        is_leaf=lambda v: isinstance(v, nnx.Variable))
    params = {k: {n: v[...] for n, v in d.items()} for k, d in nblock.params.items()}
    y, upd = lblock.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                          use_running_average=False, mutable=["batch_stats"])
    np.testing.assert_allclose(y, nblock(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(upd["batch_stats"]["norm1"]["mean"], nblock.batch_stats["norm1"]["mean"][...],
                               rtol=1e-6, atol=1e-7)
    stack = lblocks.ResidualStack(8, num_blocks=3)
    v = stack.init(jax.random.key(0), x, use_running_average=True)
    assert v["params"]["conv1"]["kernel"].shape == (3, 3, 3, 8, 8)
    assert isinstance(stack, nn.Module)


@pytest.mark.parametrize("hw,k,stride", [((7, 8), 3, 2), ((8, 8), 1, 2), ((9, 6), 7, 2), ((5, 5), 3, 1),
                                         ((2, 2), 3, 1), ((4, 3), 3, 1), ((3, 4), 2, 1)])
def test_conv_canonical_vjp_equals_autodiff(hw, k, stride):
    """The CPU path (small maps as a patches matmul; backward as plain NHWC convolutions, fast inside lax.scan)
    equals XLA's convolution and autodiff's transpose rules."""
    @jax.jit
    def grads(x, w):
        return [jax.grad(lambda x, w: jnp.sum(jnp.sin(R.conv2d(x, w, stride, canonical_vjp=c))), (0, 1))(x, w)
                for c in (True, False)]

    with jax.enable_x64(True):  # f64, so that a summation order cannot hide (or fake) a difference
        x = jnp.asarray(_x((2, *hw, 3), 1), jnp.float64)
        w = jnp.asarray(_x((k, k, 3, 5), 2), jnp.float64)
        (dx, dw), (dx_ref, dw_ref) = grads(x, w)
    assert dx.shape == x.shape and dw.shape == w.shape
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("hw,k,stride", [((1, 1), 3, 1), ((2, 2), 3, 1), ((2, 3), 3, 2), ((4, 4), 3, 1),
                                         ((5, 7), 3, 2), ((8, 8), 1, 2), ((6, 6), 2, 1), ((9, 9), 7, 2)])
def test_conv_patches_equals_xla_conv(hw, k, stride):
    """The small-map matmul formulation is the same convolution (padding k//2, any stride) as XLA's, in f64."""
    from rnlib.ops.residual import _conv, _conv_patches

    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).standard_normal((3, *hw, 4)))
        w = jnp.asarray(np.random.default_rng(1).standard_normal((k, k, 4, 5)))
        ref = _conv(x, w, stride)
        got = _conv_patches(x, w, stride)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
