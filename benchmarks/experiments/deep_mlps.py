"""Experiment-4 models: deep plain / residual ReLU MLPs with BatchNorm, LayerNorm or no norm, as pure functions.

Layers are stacked and run under ``lax.scan`` so that a 128-layer net compiles as fast as a 2-layer one, and the
parameters are a plain dict ``{"w_in": (d, w), "layers": (L, w, w), "w_out": (w,)}`` so that
``rnlib.diagnostics.grad_norms(..., unstack=...)`` gives one gradient norm per layer.

* plain, depth L:    h <- relu(N(h W_l))                    for l = 1..L            (conv-BN-ReLU, He et al. v1)
* residual, depth L: h <- relu(h + N(relu(N(h W_a)) W_b))   for L/2 two-layer blocks (the basic block, v1)

N is BatchNorm (statistics over the batch axis, i.e. over the points of the line), rnlib.ops.layer_norm (over
features) or the identity; no learned affine (scale 1, bias 0, as at initialisation). He-normal weights.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rnlib import ops

ARCHS = ("plain", "residual")
MLP_NORMS = ("none", "batch", "layer")


def init_mlp(key: jax.Array, depth: int, *, width: int = 128, in_features: int = 16) -> dict[str, jax.Array]:
    """He-normal parameters for ``depth`` hidden layers of ``width`` units."""
    k_in, k_l, k_out = jax.random.split(key, 3)
    return {"w_in": jax.random.normal(k_in, (in_features, width)) * np.sqrt(1.0 / in_features),
            "layers": jax.random.normal(k_l, (depth, width, width)) * np.sqrt(2.0 / width),
            "w_out": jax.random.normal(k_out, (width,)) / np.sqrt(width)}


def _norm(h: jax.Array, kind: str) -> jax.Array:
    if kind == "none":
        return h
    if kind == "layer":
        return ops.layer_norm(h, epsilon=1e-5)
    if kind == "batch":  # training-mode BatchNorm: statistics over the batch (two-pass variance)
        mu = jnp.mean(h, axis=0, keepdims=True)
        return (h - mu) * jax.lax.rsqrt(jnp.mean(jnp.square(h - mu), axis=0, keepdims=True) + 1e-5)
    raise ValueError(f"norm: expected one of {MLP_NORMS}, got {kind!r}")


def apply_mlp(params: dict[str, jax.Array], x: jax.Array, *, arch: str, norm: str) -> jax.Array:
    """(N, in_features) -> (N,) scalar outputs. A residual net needs an even depth (two layers per block)."""
    h = x @ params["w_in"]
    layers = params["layers"]
    if arch == "plain":
        def body(h, w):
            return jax.nn.relu(_norm(h @ w, norm)), None
    elif arch == "residual":
        if layers.shape[0] % 2:
            raise ValueError(f"residual MLP: depth must be even (two layers per block), got {layers.shape[0]}")
        layers = layers.reshape((-1, 2) + layers.shape[1:])

        def body(h, w):
            branch = _norm(jax.nn.relu(_norm(h @ w[0], norm)) @ w[1], norm)
            return jax.nn.relu(h + branch), None
    else:
        raise ValueError(f"arch: expected one of {ARCHS}, got {arch!r}")
    h, _ = jax.lax.scan(body, h, layers)
    return h @ params["w_out"]
