"""Experiment-3 models: encoder -> pool -> norm -> MLP head, with a pluggable norm.

The norm sits on the pooled per-example representation, the place where a task's label can live in the
representation's overall statistics:

* cards (N, T, 13) -> per-card MLP -> running (causal) sum over cards -> norm -> head -> running count (N, T)
* images (N, H, W, 1) -> conv 3x3 + ReLU + conv 1x1 -> mean over pixels -> norm -> head -> edge count (N,)

With ``encoder_bias=False`` (the default for images) the encoder is positively homogeneous, so pixels where a
learned zero-sum filter sees no edge contribute nothing and the pooled vector is (edge count) x (average edge
response): the count lives in the vector's scale, i.e. in its per-example mean and spread. With biases, flat
regions contribute a constant vector and the count can also move the pooled vector's *direction*, which a norm
keeps — the experiment measures both.

A running sum of per-card embeddings grows with the number of cards; LayerNorm/RMSNorm divide that growth out
(they are invariant to rescaling their input), StatsLayerNorm puts mean and log-std back, no norm keeps it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rnlib import nn as rnn

NORMS = ("none", "layer", "rms", "stats")


def make_norm(kind: str, features: int, rngs: nnx.Rngs) -> nnx.Module | None:
    """None (identity) or an rnlib.nn norm over the last axis."""
    if kind == "none":
        return None
    cls = {"layer": rnn.LayerNorm, "rms": rnn.RMSNorm, "stats": rnn.StatsLayerNorm}.get(kind)
    if cls is None:
        raise ValueError(f"norm: expected one of {NORMS}, got {kind!r}")
    return cls(features, rngs=rngs)


class PoolNormNet(nnx.Module):
    """``head(norm(pool(encoder(x))))`` with a scalar output per pooled position.

    Args:
      task: "cards" (input (N, T, 13), causal sum over T, output (N, T)) or "edges" (input (N, H, W, C),
        mean over H, W, output (N,)).
      norm: "none" | "layer" | "rms" | "stats".
      features: width of the pooled representation; hidden: width of the head's hidden layer.
      encoder_bias: biases in the image encoder (default False, see the module docstring; cards always have them).
    """

    def __init__(self, task: str, norm: str, *, features: int = 64, hidden: int = 64, in_features: int | None = None,
                 encoder_bias: bool | None = None, rngs: nnx.Rngs):
        if task == "cards":
            d_in = in_features or 13
            self.encoder = nnx.Sequential(nnx.Linear(d_in, features, rngs=rngs), jax.nn.relu,
                                          nnx.Linear(features, features, rngs=rngs))
        elif task == "edges":
            d_in = in_features or 1
            bias = False if encoder_bias is None else encoder_bias
            self.encoder = nnx.Sequential(nnx.Conv(d_in, features, (3, 3), use_bias=bias, rngs=rngs), jax.nn.relu,
                                          nnx.Conv(features, features, (1, 1), use_bias=bias, rngs=rngs))
        else:
            raise ValueError(f"task: expected 'cards' or 'edges', got {task!r}")
        self.task = task
        self.norm_kind = norm
        self.norm = make_norm(norm, features, rngs)
        self.head = nnx.Sequential(nnx.Linear(features, hidden, rngs=rngs), jax.nn.relu,
                                   nnx.Linear(hidden, 1, rngs=rngs))

    def pooled(self, x: jax.Array) -> jax.Array:
        """The representation the norm sees: (N, T, D) for cards, (N, D) for edges."""
        h = self.encoder(x)
        return jnp.cumsum(h, axis=1) if self.task == "cards" else jnp.mean(h, axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.pooled(x)
        if self.norm is not None:
            h = self.norm(h)
        return self.head(h)[..., 0]
