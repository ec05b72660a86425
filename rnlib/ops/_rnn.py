"""Layer-normalised LSTM and GRU step functions (Ba, Kiros & Hinton 2016), with plain baselines.

LN-LSTM (Ba et al. eqs. 20-22; the input and recurrent pre-activations are normalised separately, each over
all 4H gate units, and the cell state before the output tanh):

    (f, i, o, g) = LN(W_h h_{t-1}; a1) + LN(W_x x_t; a2) + b
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(LN(c_t; a3, b3))

LN-GRU (the same recipe: input and recurrent terms normalised separately; the two gates jointly, the candidate
on its own, as in the paper authors' code):

    (r, z) = sigmoid(LN(W_x^{rz} x; a1) + LN(W_h^{rz} h; a2) + b_{rz})
    n      = tanh(LN(W_x^n x; a3) + r * LN(W_h^n h; a4) + b_n)
    h_t    = (1 - z) * n + z * h_{t-1}                                   (Flax's convention)

The LN biases of the pre-activation norms are folded into the single bias b (they add to it), so the parameters
are not redundant. ``layer_norm=False`` gives the same cells with every LN replaced by the identity (baselines).
Norms are ``rnlib.ops.layer_norm``. The cells in ``rnlib.nn._rnn`` and ``rnlib.linen._rnn`` wrap these.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rnlib.ops import _norms

Params = dict[str, Any]


def _ln(params: Params, name: str, v: jax.Array, layer_norm: bool, epsilon: float) -> jax.Array:
    if not layer_norm:
        return v
    p = params[name]
    return _norms.layer_norm(v, p["scale"], p.get("bias"), epsilon=epsilon)


def lstm_step(params: Params, carry: tuple[jax.Array, jax.Array], x: jax.Array, *, layer_norm: bool = True,
              epsilon: float = 1e-6) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """One LSTM step. carry (c, h) each (..., H); x (..., I) -> ((c', h'), h'). Gate order (f, i, o, g).

    params: ``input_kernel`` (I, 4H), ``recurrent_kernel`` (H, 4H), ``bias`` (4H,) and, with layer_norm,
    ``ln_input``/``ln_recurrent`` {scale (4H,)} and ``ln_cell`` {scale, bias (H,)}.
    """
    c, h = carry
    a = (_ln(params, "ln_recurrent", h @ params["recurrent_kernel"].astype(h.dtype), layer_norm, epsilon)
         + _ln(params, "ln_input", x @ params["input_kernel"].astype(x.dtype), layer_norm, epsilon)
         + params["bias"].astype(x.dtype))
    f, i, o, g = jnp.split(a, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(_ln(params, "ln_cell", c, layer_norm, epsilon))
    return (c, h), h


def gru_step(params: Params, h: jax.Array, x: jax.Array, *, layer_norm: bool = True,
             epsilon: float = 1e-6) -> tuple[jax.Array, jax.Array]:
    """One GRU step. h (..., H), x (..., I) -> (h', h'). Gate order (r, z | n).

    params: ``input_kernel`` (I, 3H), ``recurrent_kernel`` (H, 3H), ``bias`` (3H,) and, with layer_norm,
    ``ln_input_gates``/``ln_recurrent_gates`` {scale (2H,)}, ``ln_input_candidate``/``ln_recurrent_candidate``
    {scale (H,)}.
    """
    hidden = h.shape[-1]
    wx = x @ params["input_kernel"].astype(x.dtype)
    wh = h @ params["recurrent_kernel"].astype(h.dtype)
    b = params["bias"].astype(x.dtype)
    gates = jax.nn.sigmoid(_ln(params, "ln_input_gates", wx[..., :2 * hidden], layer_norm, epsilon)
                           + _ln(params, "ln_recurrent_gates", wh[..., :2 * hidden], layer_norm, epsilon)
                           + b[:2 * hidden])
    r, z = jnp.split(gates, 2, axis=-1)
    n = jnp.tanh(_ln(params, "ln_input_candidate", wx[..., 2 * hidden:], layer_norm, epsilon)
                 + r * _ln(params, "ln_recurrent_candidate", wh[..., 2 * hidden:], layer_norm, epsilon)
                 + b[2 * hidden:])
    h = (1.0 - z) * n + z * h
    return h, h


def cell_param_shapes(cell: str, in_features: int, hidden: int, layer_norm: bool) -> dict[str, Any]:
    """Shapes of the non-kernel parameters: {name: shape} for biases, {name: {"scale"/"bias": shape}} for LNs."""
    gates = 4 if cell == "lstm" else 3
    shapes: dict[str, Any] = {"bias": (gates * hidden,)}
    if layer_norm and cell == "lstm":
        shapes.update(ln_input={"scale": (4 * hidden,)}, ln_recurrent={"scale": (4 * hidden,)},
                      ln_cell={"scale": (hidden,), "bias": (hidden,)})
    elif layer_norm:
        shapes.update(ln_input_gates={"scale": (2 * hidden,)}, ln_recurrent_gates={"scale": (2 * hidden,)},
                      ln_input_candidate={"scale": (hidden,)}, ln_recurrent_candidate={"scale": (hidden,)})
    return shapes
