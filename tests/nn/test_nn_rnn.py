"""LN-LSTM / LN-GRU NNX cells against a float64 NumPy transcription of Ba et al. (2016)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from rnn_reference import gru_reference, lstm_reference

from rnlib.nn import LayerNormGRUCell, LayerNormLSTMCell
from rnlib.ops import residual as R


def _randomise(cell, seed=0):
    """Random biases, LN gains and LN biases (the defaults 1/0 would hide a mixed-up parameter)."""
    flat = nnx.to_flat_state(nnx.state(cell, nnx.Param))
    for i, (path, var) in enumerate(flat):
        if path[-1] in ("scale", "bias"):
            noise = R.normal(jax.random.key(seed + i), var.shape)
            var.set_value((1.0 if path[-1] == "scale" else 0.0) + 0.5 * noise)
    return {"/".join(map(str, k)): v for k, v in flat}


def _tree(cell):
    """Parameters as a nested dict of float64 NumPy arrays."""
    out = {}
    for path, v in nnx.to_flat_state(nnx.state(cell, nnx.Param)):
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = np.asarray(v[...], np.float64)
    return out


@pytest.mark.parametrize("cls,reference", [(LayerNormLSTMCell, lstm_reference), (LayerNormGRUCell, gru_reference)],
                         ids=["lstm", "gru"])
@pytest.mark.parametrize("ln", [True, False], ids=["ln", "plain"])
def test_cell_matches_numpy_transcription(cls, reference, ln):
    cell = cls(3, 6, layer_norm=ln, rngs=nnx.Rngs(0))
    _randomise(cell)
    xs = 2.0 * R.normal(jax.random.key(7), (4, 5, 3))
    ys = nnx.jit(lambda c, x: nnx.RNN(c)(x))(cell, xs)
    ref = reference(_tree(cell), np.asarray(xs, np.float64), ln)
    assert ys.shape == (4, 5, 6)
    np.testing.assert_allclose(ys, ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("cls", [LayerNormLSTMCell, LayerNormGRUCell], ids=["lstm", "gru"])
def test_layer_norm_makes_cells_invariant_to_weight_rescaling(cls):
    """Ba et al. Table 1: with LN, rescaling a weight matrix leaves the outputs unchanged; without, it does not."""
    xs = R.normal(jax.random.key(3), (4, 5, 3))  # same sizes as above: compiled initialisers are reused
    for ln in (True, False):
        cell = cls(3, 6, layer_norm=ln, rngs=nnx.Rngs(0))
        forward = nnx.jit(lambda c, x: nnx.RNN(c)(x))
        y = forward(cell, xs)
        cell.input_kernel.set_value(cell.input_kernel[...] * 10.0)
        cell.recurrent_kernel.set_value(cell.recurrent_kernel[...] * 3.0)
        diff = float(jnp.max(jnp.abs(forward(cell, xs) - y)))
        assert (diff < 1e-4) if ln else (diff > 1e-2)


def test_single_step_and_carry():
    cell = LayerNormLSTMCell(3, 6, rngs=nnx.Rngs(0))
    carry = cell.initialize_carry((4, 3))
    assert [c.shape for c in carry] == [(4, 6), (4, 6)] and cell.num_feature_axes == 1
    (c, h), y = nnx.jit(lambda m, c, x: m(c, x))(cell, carry, jnp.ones((4, 3)))
    np.testing.assert_array_equal(h, y)
    assert not np.allclose(c, 0.0)
    gru = LayerNormGRUCell(3, 6, rngs=nnx.Rngs(0))
    h0 = gru.initialize_carry((4, 3), nnx.Rngs(carry=1))
    assert h0.shape == (4, 6)
