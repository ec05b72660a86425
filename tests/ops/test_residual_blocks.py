"""Residual block maths (rnlib.ops.residual): blocks, options, checks (the wrappers: tests/nn, tests/linen).

The block is checked against the same block assembled from flax's own Conv and BatchNorm layers, so an error in
the shared ops (padding, stride placement, norm order, statistics update) cannot hide behind itself.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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


def test_spec_validation():
    with pytest.raises(ValueError, match="shortcut"):
        R.BlockSpec(8, 8, shortcut="D")
    with pytest.raises(ValueError, match="norm"):
        R.BlockSpec(8, 8, norm="group")
    with pytest.raises(ValueError, match="cannot shrink"):
        R.BlockSpec(16, 8, shortcut="A")
    with pytest.raises(ValueError, match="keep the shape"):
        R.stack_init(jax.random.key(0), R.BlockSpec(8, 16), 2)
    with pytest.raises(ValueError, match="expansion"):
        R.BlockOptions(expansion=0)
    with pytest.raises(ValueError, match="momentum"):
        R.BlockOptions(momentum=1.5)
    with pytest.raises(TypeError):
        R.BlockOptions(stride=2)  # geometry is not an option
    spec = R.BlockSpec(8, 8)
    params, state = R.block_init(jax.random.key(0), spec)
    with pytest.raises(ValueError, match="8 input channels"):
        R.residual_block(params, state, jnp.ones((1, 4, 4, 3)), spec, train=True)
    with pytest.raises(ValueError, match="rank 4"):
        R.residual_block(params, state, jnp.ones((4, 4, 8)), spec, train=True)


def test_options_are_stated_once():
    """BlockSpec = geometry + BlockOptions; the options round-trip and a stack's spec keeps the shape."""
    opts = R.BlockOptions(kind="bottleneck", order="pre", shortcut="C", norm="rms", expansion=2,
                          zero_init_last=True, branch_scale=True, momentum=0.8, epsilon=1e-3)
    spec = R.BlockSpec.of(6, 3, 2, opts)
    assert spec.options == opts and R.BlockSpec(6, 3, 2, **opts.as_dict()) == spec
    assert (spec.in_features, spec.features, spec.stride, spec.out_features) == (6, 3, 2, 6)
    stack = R.BlockSpec.stackable(3, opts)
    assert (stack.in_features, stack.out_features, stack.stride, stack.changes_shape) == (6, 6, 1, False)
    assert hash(spec) == hash(R.BlockSpec.of(6, 3, 2, opts))  # a static argument of jit / custom_vjp


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "unrolled"])
def test_stack_equals_blocks_in_sequence(scan):
    """residual_stack (scanned or unrolled) = the blocks applied one by one, outputs and running statistics."""
    spec = R.BlockSpec(4, 4)
    params, state = R.stack_init(jax.random.key(0), spec, 3)
    params = _randomise(params)
    x = _x((2, 5, 5, 4))
    y, new_state = jax.jit(lambda p, s, x: R.residual_stack(p, s, x, spec, train=True, scan=scan))(params, state, x)
    h = x
    for i in range(3):
        h, s_i = R.residual_block(*jax.tree.map(lambda a: a[i], (params, state)), h, spec, train=True)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6), new_state, s_i)
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-5)


def test_scanned_stack_gradients_equal_unrolled():
    """The scan keeps only SCAN_POLICY's residuals and recomputes the rest: its gradients must not change."""
    spec = R.BlockSpec(4, 4)
    params, state = R.stack_init(jax.random.key(0), spec, 3)
    params = _randomise(params)
    x = _x((2, 5, 5, 4))

    def loss(p, x, scan):
        return jnp.sum(jnp.sin(R.residual_stack(p, state, x, spec, train=True, scan=scan)[0]))

    (gp, gx), (gp_ref, gx_ref) = jax.jit(lambda p, x: [jax.grad(loss, (0, 1))(p, x, s) for s in (True, False)])(
        params, x)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), gp, gp_ref)
    assert float(jnp.max(jnp.abs(gx))) > 1e-3  # a non-trivial gradient
