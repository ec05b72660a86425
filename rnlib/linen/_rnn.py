"""Flax linen LN-LSTM / LN-GRU cells (Ba et al. 2016) and their plain baselines (``layer_norm=False``).

Same maths and parameter names as ``rnlib.nn._rnn`` (both call ``rnlib.ops._rnn``'s ``lstm_step``/``gru_step``); usable with
``flax.linen.RNN``. Carry: LSTM (c, h), GRU h.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from rnlib.ops._rnn import cell_param_shapes, gru_step, lstm_step


class _Cell(nn.RNNCellBase):
    hidden_features: int
    layer_norm: bool = True
    epsilon: float = 1e-6
    kernel_init: Any = nn.initializers.lecun_normal()
    recurrent_kernel_init: Any = nn.initializers.orthogonal()
    carry_init: Any = nn.initializers.zeros_init()

    cell = ""  # class constant, not a field

    def _params(self, in_features: int) -> dict:
        gates = 4 if self.cell == "lstm" else 3
        h = self.hidden_features
        p = {"input_kernel": self.param("input_kernel", self.kernel_init, (in_features, gates * h), jnp.float32),
             "recurrent_kernel": self.param("recurrent_kernel", self.recurrent_kernel_init, (h, gates * h),
                                            jnp.float32)}
        for name, shape in cell_param_shapes(self.cell, in_features, h, self.layer_norm).items():
            if isinstance(shape, dict):
                p[name] = self.param(name, lambda _k, s=shape: {n: (jnp.ones if n == "scale" else jnp.zeros)(
                    v, jnp.float32) for n, v in s.items()})
            else:
                p[name] = self.param(name, nn.initializers.zeros_init(), shape, jnp.float32)
        return p

    def _carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> jax.Array:
        return self.carry_init(rng, (*input_shape[:-1], self.hidden_features), jnp.float32)

    @property
    def num_feature_axes(self) -> int:
        return 1


class LayerNormLSTMCell(_Cell):
    """LN-LSTM cell: ``(c, h), y = cell((c, h), x)``; ``layer_norm=False`` is the plain LSTM."""

    cell = "lstm"

    @nn.compact
    def __call__(self, carry, inputs):
        return lstm_step(self._params(inputs.shape[-1]), carry, inputs, layer_norm=self.layer_norm,
                         epsilon=self.epsilon)

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]):
        k1, k2 = jax.random.split(rng)
        return self._carry(k1, input_shape), self._carry(k2, input_shape)


class LayerNormGRUCell(_Cell):
    """LN-GRU cell: ``h, y = cell(h, x)``; ``layer_norm=False`` is the plain GRU."""

    cell = "gru"

    @nn.compact
    def __call__(self, carry, inputs):
        return gru_step(self._params(inputs.shape[-1]), carry, inputs, layer_norm=self.layer_norm,
                        epsilon=self.epsilon)

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]):
        return self._carry(rng, input_shape)
