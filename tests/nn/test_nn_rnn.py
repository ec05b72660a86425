"""LN-LSTM / LN-GRU cells against a float64 NumPy transcription of Ba et al. (2016), NNX and linen."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from rnlib.linen import rnn as lrnn
from rnlib.nn.rnn import LayerNormGRUCell, LayerNormLSTMCell
from rnlib.ops import residual as R

EPS = 1e-6


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def LN(a, gain, bias=0.0):
    """Ba et al. eqs. 3-4 (+ epsilon inside the root, as every implementation): per example over the units."""
    mu = a.mean(-1, keepdims=True)
    sigma = np.sqrt(((a - mu) ** 2).mean(-1, keepdims=True) + EPS)
    return gain / sigma * (a - mu) + bias


def lstm_reference(p, xs, ln):
    """Ba et al. eqs. 20-22 (ln=True) or the plain LSTM (ln=False). xs: (B, T, I) -> hs (B, T, H)."""
    H = p["recurrent_kernel"].shape[0]
    c = np.zeros((xs.shape[0], H))
    h = np.zeros((xs.shape[0], H))
    hs = []
    for t in range(xs.shape[1]):
        x = xs[:, t]
        if ln:
            a = (LN(h @ p["recurrent_kernel"], p["ln_recurrent"]["scale"])
                 + LN(x @ p["input_kernel"], p["ln_input"]["scale"]) + p["bias"])
        else:
            a = h @ p["recurrent_kernel"] + x @ p["input_kernel"] + p["bias"]
        f, i, o, g = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(LN(c, p["ln_cell"]["scale"], p["ln_cell"]["bias"]) if ln else c)
        hs.append(h)
    return np.stack(hs, 1)


def gru_reference(p, xs, ln):
    """LN-GRU: gates and candidate, input and recurrent terms normalised separately; h = (1-z) n + z h."""
    H = p["recurrent_kernel"].shape[0]
    h = np.zeros((xs.shape[0], H))
    norm = (lambda v, name: LN(v, p[name]["scale"])) if ln else (lambda v, name: v)
    hs = []
    for t in range(xs.shape[1]):
        wx, wh = xs[:, t] @ p["input_kernel"], h @ p["recurrent_kernel"]
        gates = sigmoid(norm(wx[:, :2 * H], "ln_input_gates") + norm(wh[:, :2 * H], "ln_recurrent_gates")
                        + p["bias"][:2 * H])
        r, z = gates[:, :H], gates[:, H:]
        n = np.tanh(norm(wx[:, 2 * H:], "ln_input_candidate") + r * norm(wh[:, 2 * H:], "ln_recurrent_candidate")
                    + p["bias"][2 * H:])
        h = (1.0 - z) * n + z * h
        hs.append(h)
    return np.stack(hs, 1)


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


CASES = [(LayerNormLSTMCell, lrnn.LayerNormLSTMCell, lstm_reference),
         (LayerNormGRUCell, lrnn.LayerNormGRUCell, gru_reference)]


@pytest.mark.parametrize("cls,lcls,reference", CASES, ids=["lstm", "gru"])
@pytest.mark.parametrize("ln", [True, False], ids=["ln", "plain"])
def test_cell_matches_numpy_transcription_nnx_and_linen(cls, lcls, reference, ln):
    cell = cls(3, 6, layer_norm=ln, rngs=nnx.Rngs(0))
    _randomise(cell)
    xs = 2.0 * R.normal(jax.random.key(7), (4, 5, 3))
    ys = nnx.jit(lambda c, x: nnx.RNN(c)(x))(cell, xs)
    ref = reference(_tree(cell), np.asarray(xs, np.float64), ln)
    assert ys.shape == (4, 5, 6)
    np.testing.assert_allclose(ys, ref, rtol=2e-5, atol=2e-5)
    # The linen cell with the same parameters gives the same sequence.
    lin = nn.RNN(lcls(6, layer_norm=ln))
    variables = lin.init(jax.random.key(0), xs)
    params = jax.tree.map(jnp.asarray, _tree(cell))
    assert jax.tree.map(jnp.shape, variables["params"]["cell"]) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(lin.apply({"params": {"cell": params}}, xs), ref, rtol=2e-5, atol=2e-5)


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
