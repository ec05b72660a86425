"""A tiny NNX CNN with BatchNorm for fast training tests (not part of the library).

`make_tiny` fills the parameters from numpy instead of running the initialisers eagerly: on a loaded 2-core
CPU every eager initialiser op costs a separate XLA compile (seconds), numpy costs nothing.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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


def make_tiny(in_features: int = 1, num_classes: int = 10, seed: int = 0, width: int = 8) -> TinyNet:
    abstract = nnx.eval_shape(lambda: TinyNet(in_features, num_classes, nnx.Rngs(0), width))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def init(path, s):
        name = str(path[-1].key)
        if name == "kernel":
            return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1])), s.dtype)
        return jnp.full(s.shape, 1.0 if name in ("scale", "var") else 0.0, s.dtype)

    pure = jax.tree_util.tree_map_with_path(init, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def tiny_model_fn(dataset, rngs: nnx.Rngs) -> TinyNet:
    """fit()'s model_fn signature; the init is fixed (seed 0): the tests vary the data/augmentation seed only."""
    return make_tiny(dataset.image_shape[-1], dataset.num_classes)
