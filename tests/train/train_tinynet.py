"""A tiny NNX CNN with BatchNorm for fast training tests (not part of the library)."""
from __future__ import annotations

import jax
from flax import nnx


class TinyNet(nnx.Module):
    def __init__(self, in_features: int, num_classes: int, rngs: nnx.Rngs, width: int = 8):
        self.conv = nnx.Conv(in_features, width, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(width, rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), strides=(2, 2), rngs=rngs)
        self.bn2 = nnx.BatchNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn(self.conv(x)))
        x = jax.nn.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(axis=(1, 2)))


def tiny_model_fn(dataset, rngs: nnx.Rngs) -> TinyNet:
    return TinyNet(dataset.image_shape[-1], dataset.num_classes, rngs)
