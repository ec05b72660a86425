"""Layer-normalised LSTM and GRU cells (Ba, Kiros & Hinton 2016) for Flax NNX, with plain baselines.

The maths (equations, gate order, parameter names) is in :mod:`rnlib.ops._rnn`; these cells own the parameters.
``layer_norm=False`` gives the same cells without LN (the baselines).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rnlib.ops._rnn import Params, cell_param_shapes, gru_step, lstm_step


def _init_value(name: str, shape: tuple[int, ...]) -> jax.Array:
    return jnp.ones(shape, jnp.float32) if name == "scale" else jnp.zeros(shape, jnp.float32)


class _Cell(nnx.RNNCellBase):
    cell: str = ""

    def __init__(self, in_features: int, hidden_features: int, *, layer_norm: bool = True, epsilon: float = 1e-6,
                 kernel_init: Any = nnx.initializers.lecun_normal(),
                 recurrent_kernel_init: Any = nnx.initializers.orthogonal(),
                 carry_init: Any = nnx.initializers.zeros_init(), rngs: nnx.Rngs):
        gates = 4 if self.cell == "lstm" else 3
        self.in_features, self.hidden_features = in_features, hidden_features
        self.layer_norm, self.epsilon, self.carry_init = layer_norm, epsilon, carry_init
        self.input_kernel = nnx.Param(kernel_init(rngs.params(), (in_features, gates * hidden_features),
                                                  jnp.float32))
        self.recurrent_kernel = nnx.Param(recurrent_kernel_init(rngs.params(),
                                                                (hidden_features, gates * hidden_features),
                                                                jnp.float32))
        shapes = cell_param_shapes(self.cell, in_features, hidden_features, layer_norm)
        self.bias = nnx.Param(jnp.zeros(shapes.pop("bias"), jnp.float32))
        self.norm_names = tuple(shapes)  # same top-level names as the linen cells' parameter tree
        for k, v in shapes.items():
            setattr(self, k, nnx.data({n: nnx.Param(_init_value(n, s)) for n, s in v.items()}))

    def _params(self) -> Params:
        p = {"input_kernel": self.input_kernel[...], "recurrent_kernel": self.recurrent_kernel[...],
             "bias": self.bias[...]}
        p.update({k: {n: v[...] for n, v in getattr(self, k).items()} for k in self.norm_names})
        return p

    def _zeros(self, input_shape: tuple[int, ...], rngs: Any) -> jax.Array:
        # Like flax's cells: a stream (or Rngs' "carry" stream) for random carry inits; zeros need no key.
        if isinstance(rngs, nnx.Rngs):
            rngs = rngs.carry
        key = rngs() if rngs is not None else jax.random.key(0)
        return self.carry_init(key, (*input_shape[:-1], self.hidden_features), jnp.float32)

    @property
    def num_feature_axes(self) -> int:
        return 1


class LayerNormLSTMCell(_Cell):
    """LN-LSTM cell (Ba et al. 2016); ``layer_norm=False`` is the plain LSTM baseline.

    ``carry, y = cell(carry, x)`` with carry (c, h), x (..., in_features), y = h (..., hidden_features).
    Works with ``nnx.RNN(cell)`` over (batch, time, features).
    """

    cell = "lstm"

    def __call__(self, carry: tuple[jax.Array, jax.Array], inputs: jax.Array):
        return lstm_step(self._params(), carry, inputs, layer_norm=self.layer_norm, epsilon=self.epsilon)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None):
        return self._zeros(input_shape, rngs), self._zeros(input_shape, rngs)


class LayerNormGRUCell(_Cell):
    """LN-GRU cell; ``layer_norm=False`` is the plain GRU baseline. ``h, y = cell(h, x)``; y = h."""

    cell = "gru"

    def __call__(self, carry: jax.Array, inputs: jax.Array):
        return gru_step(self._params(), carry, inputs, layer_norm=self.layer_norm, epsilon=self.epsilon)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None):
        return self._zeros(input_shape, rngs)
