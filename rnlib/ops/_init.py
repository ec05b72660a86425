"""Parameter initialisers for the residual nets: standard normal draws, He (fan-out) and LeCun (fan-in) normals."""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_CHUNK = 1 << 16


@jax.jit
def _normal_chunk(key: jax.Array, index: jax.Array) -> jax.Array:
    return jax.random.normal(jax.random.fold_in(key, index), (_CHUNK,), jnp.float32)


def normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Standard normal float32 draws of ``shape`` (traceable; the same values eagerly and under jit).

    Built from fixed-size chunks so that XLA compiles the random-bits program once per process: compiling
    ``jax.random.normal`` afresh for every parameter shape costs seconds each on a CPU and dominated model init.
    """
    n = math.prod(shape)
    chunks = [_normal_chunk(key, np.uint32(i)) for i in range(max(1, -(-n // _CHUNK)))]
    flat = chunks[0] if len(chunks) == 1 else jnp.concatenate(chunks)
    return flat[:n].reshape(shape)


def he_normal(key: jax.Array, shape: tuple[int, ...], prefix: tuple[int, ...] = ()) -> jax.Array:
    """He et al. init as torchvision applies it to an HWIO kernel: N(0, 2 / (k*k*out)); ``prefix``: stack axes."""
    std = np.sqrt(2.0 / (np.prod(shape[:-2]) * shape[-1]))
    return normal(key, (*prefix, *shape)) * np.float32(std)


def lecun_normal(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """N(0, 1 / fan_in) for a (fan_in, fan_out) dense kernel; a flax-style initializer (key, shape, dtype)."""
    return (normal(key, tuple(shape)) * np.float32(1.0 / np.sqrt(shape[0]))).astype(dtype)


def constant(shape: tuple[int, ...], value: float = 0.0) -> jax.Array:
    """A float32 array filled with ``value``, built with NumPy: constant initial values need no XLA compilation
    (an eager ``jnp.full`` compiles once per shape)."""
    return jnp.asarray(np.full(shape, value, np.float32))
