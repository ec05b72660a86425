"""Norms over the channel axis of NHWC activations, as used inside residual blocks.

"batch": batch norm (statistics over N, H, W; running statistics in a separate state dict); "layer" / "rms" /
"stats": rnlib's layer norm, RMS norm and stats-reinjecting layer norm over the channels of each position;
"none": the identity. Parameters ``{"scale", "bias"[, "stats_scale"]}``, state ``{"mean", "var"}`` (batch only).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from rnlib.ops._init import constant
from rnlib.ops._norms import layer_norm, layer_norm_with_stats, rms_norm

Params = dict[str, Any]
State = dict[str, Any]

NORMS = ("batch", "layer", "rms", "stats", "none")
STATS_NAME = "rnlib_norm_stats"  # batch norm's batch mean and variance, named for checkpoint policies


def norm_init(kind: str, features: int, *, zero_scale: bool = False,
              prefix: tuple[int, ...] = ()) -> tuple[Params, State]:
    """Parameters and running state of one channel norm ({}, {} for "none"); ``prefix`` adds leading (stack) axes.

    Scales start at 1 (0 with ``zero_scale``), biases and ``stats_scale`` (2, features) at 0; batch norm's running
    mean and variance at 0 and 1.
    """
    if kind == "none":
        return {}, {}
    shape = (*prefix, features)
    params: Params = {"scale": constant(shape, 0.0 if zero_scale else 1.0)}
    if kind != "rms":
        params["bias"] = constant(shape)
    if kind == "stats":
        params["stats_scale"] = constant((*prefix, 2, features))
    state: State = {"mean": constant(shape), "var": constant(shape, 1.0)} if kind == "batch" else {}
    return params, state


def normalize(params: Params, state: State, x: jax.Array, kind: str, *, train: bool, momentum: float = 0.9,
              epsilon: float = 1e-5) -> tuple[jax.Array, State]:
    """Normalise NHWC ``x`` over its channels with norm ``kind``; returns (y, new running state).

    "batch": statistics over (N, H, W) in float32 (two-pass, biased variance) when ``train``, else the running
    statistics; the running statistics move by ``1 - momentum`` towards the batch's. Other kinds keep no state.
    """
    if kind == "none":
        return x, state
    if kind == "layer":
        return layer_norm(x, params["scale"], params["bias"], epsilon=epsilon), state
    if kind == "rms":
        return rms_norm(x, params["scale"], epsilon=epsilon), state
    if kind == "stats":
        return layer_norm_with_stats(x, params["scale"], params["bias"], params["stats_scale"],
                                     epsilon=epsilon), state
    if kind != "batch":
        raise ValueError(f"normalize: kind={kind!r}, expected one of {NORMS}")
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if train:
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(xf, axis=axes)
        var = jnp.maximum(jnp.mean(jnp.square(xf - mean), axis=axes), 0.0)
        mean, var = checkpoint_name((mean, var), STATS_NAME)
        state = {"mean": momentum * state["mean"] + (1.0 - momentum) * lax.stop_gradient(mean),
                 "var": momentum * state["var"] + (1.0 - momentum) * lax.stop_gradient(var)}
    else:
        mean, var = state["mean"], state["var"]
    y = (xf - mean) * lax.rsqrt(var + epsilon) * params["scale"] + params["bias"]
    return y.astype(x.dtype), state
