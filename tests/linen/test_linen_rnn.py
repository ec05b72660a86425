"""LN-LSTM / LN-GRU linen cells against the float64 NumPy transcription, with the NNX cells' parameter tree."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from rnn_reference import gru_reference, lstm_reference

from rnlib.linen import LayerNormGRUCell, LayerNormLSTMCell
from rnlib import nn as nnx_rnn
from rnlib.ops import residual as R


def _randomise(params, seed=0):
    """Random biases, LN gains and LN biases (the defaults 1/0 would hide a mixed-up parameter)."""
    flat, tree = jax.tree_util.tree_flatten_with_path(params)
    leaves = []
    for i, (path, v) in enumerate(flat):
        name = path[-1].key
        if name in ("scale", "bias"):
            v = (1.0 if name == "scale" else 0.0) + 0.5 * R.normal(jax.random.key(seed + i), v.shape)
        leaves.append(v)
    return jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("cls,nnx_cls,reference", [(LayerNormLSTMCell, nnx_rnn.LayerNormLSTMCell, lstm_reference),
                                                   (LayerNormGRUCell, nnx_rnn.LayerNormGRUCell, gru_reference)],
                         ids=["lstm", "gru"])
@pytest.mark.parametrize("ln", [True, False], ids=["ln", "plain"])
def test_cell_matches_numpy_transcription(cls, nnx_cls, reference, ln):
    xs = 2.0 * R.normal(jax.random.key(7), (4, 5, 3))
    rnn = nn.RNN(cls(6, layer_norm=ln))
    params = _randomise(rnn.init(jax.random.key(0), xs)["params"])
    nnx_params = nnx.to_pure_dict(nnx.state(nnx_cls(3, 6, layer_norm=ln, rngs=nnx.Rngs(0)), nnx.Param))
    assert jax.tree.map(jnp.shape, params["cell"]) == jax.tree.map(jnp.shape, nnx_params)  # same names, shapes
    ys = jax.jit(rnn.apply)({"params": params}, xs)
    ref = reference(jax.tree.map(lambda a: np.asarray(a, np.float64), params["cell"]), np.asarray(xs, np.float64),
                    ln)
    assert ys.shape == (4, 5, 6)
    np.testing.assert_allclose(ys, ref, rtol=2e-5, atol=2e-5)
