"""rnlib.nn residual blocks and stacks (NNX): options, modes, running statistics, scan/unrolled/remat stacks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnlib.nn import BottleneckBlock, ResidualBlock, ResidualStack
from rnlib.ops import residual as R


def _x(shape, seed=0):
    return R.normal(jax.random.key(seed), shape)  # fixed-shape draws: no per-shape random-bits compilation


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


def test_options_and_input_checks():
    """Keyword options go to rnlib.ops.BlockOptions (validated there); a wrong input names the block."""
    block = BottleneckBlock(8, 2, stride=2, order="pre", shortcut="C", rngs=nnx.Rngs(0))
    assert block.spec == R.BlockSpec(8, 2, 2, kind="bottleneck", order="pre", shortcut="C")
    assert ResidualStack(2, 4, kind="bottleneck", rngs=nnx.Rngs(0)).spec == R.BlockSpec.stackable(
        4, R.BlockOptions(kind="bottleneck"))
    with pytest.raises(ValueError, match="norm"):
        ResidualBlock(8, 8, norm="group", rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="colour"):
        ResidualBlock(8, 8, colour="red", rngs=nnx.Rngs(0))
    block = ResidualBlock(8, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="8 input channels"):
        block(jnp.ones((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="rank 4"):
        block(jnp.ones((4, 4, 8)))
