"""rnlib.linen residual blocks: the same parameters and outputs as the NNX blocks; options as a BlockOptions field."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx

from rnlib import linen as lblocks
from rnlib.nn import ResidualBlock
from rnlib.ops import residual as R


def _x(shape, seed=0):
    return R.normal(jax.random.key(seed), shape)  # fixed-shape draws: no per-shape random-bits compilation


def test_linen_block_equals_nnx_block():
    x = _x((2, 6, 6, 8))
    nblock = ResidualBlock(8, 16, stride=2, shortcut="B", rngs=nnx.Rngs(0))
    lblock = lblocks.ResidualBlock(16, stride=2, options=R.BlockOptions(shortcut="B"))
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


def test_linen_bottleneck_forces_its_kind():
    x = _x((2, 4, 4, 8))
    block = lblocks.BottleneckBlock(2, options=R.BlockOptions(order="pre"))
    params = block.init(jax.random.key(0), x, use_running_average=True)["params"]
    assert set(params) >= {"conv1", "conv2", "conv3"} and params["conv3"]["kernel"].shape == (1, 1, 2, 8)
