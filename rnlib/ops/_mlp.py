"""The pre-norm residual MLP block in residual-stream form, built on the fused ``add_norm``.

Parameters of one block: ``{"norm": {"scale"[, "bias"]}, "dense1": {"kernel": (D, H), "bias": (H,)},
"dense2": {"kernel": (H, D), "bias": (D,)}}``; a stack has every leaf stacked on a new leading axis.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from jax import lax

from rnlib.ops._channel_norms import norm_init
from rnlib.ops._init import constant, lecun_normal
from rnlib.ops._norms import add_norm

Params = dict[str, Any]


def mlp_block_init(key: jax.Array, features: int, hidden: int, *, norm: str = "layer",
                   zero_init_last: bool = False) -> Params:
    """Parameters of one pre-norm MLP block: norm (scale[, bias]), dense1 (D, H) + bias, dense2 (H, D) + bias.

    LeCun-normal kernels (dense2's zero with ``zero_init_last``, so the block starts as the identity), zero biases.
    """
    if norm not in ("layer", "rms"):
        raise ValueError(f"mlp_block_init: norm={norm!r}, expected 'layer' or 'rms'")
    k1, k2 = jax.random.split(key)
    return {"norm": norm_init(norm, features)[0],
            "dense1": {"kernel": lecun_normal(k1, (features, hidden)), "bias": constant((hidden,))},
            "dense2": {"kernel": (constant((hidden, features)) if zero_init_last
                                  else lecun_normal(k2, (hidden, features))),
                       "bias": constant((features,))}}


def mlp_block(params: Params, x: jax.Array, residual: jax.Array, *, norm: str = "layer", epsilon: float = 1e-6,
              activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu) -> tuple[jax.Array, jax.Array]:
    """One pre-norm residual MLP block in residual-stream form (the fused ``add_norm`` pattern):

        r' = x + r,   y = norm(r'),   h = W2 act(W1 y + b1) + b2   ->  returns (h, r').

    Chaining blocks from (x0, 0) and finishing with ``add_norm(h, r)`` computes x_{l+1} = x_l + F_l(norm(x_l)).
    x, residual: (..., D); returns two (..., D) arrays.
    """
    p = params["norm"]
    y, new_residual = add_norm(x, residual, p["scale"], p.get("bias"), norm=norm, epsilon=epsilon)
    d1, d2 = params["dense1"], params["dense2"]
    h = activation(y @ d1["kernel"].astype(y.dtype) + d1["bias"].astype(y.dtype))
    h = h @ d2["kernel"].astype(y.dtype) + d2["bias"].astype(y.dtype)
    return h, new_residual


def mlp_stack(params: Params, x: jax.Array, residual: jax.Array, *, norm: str = "layer", epsilon: float = 1e-6,
              activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu, scan: bool = True, remat: bool = False,
              remat_policy: Callable[..., bool] | None = None) -> tuple[jax.Array, jax.Array]:
    """n pre-norm MLP blocks (leaves stacked on axis 0), under ``lax.scan`` or unrolled; returns (h, residual)."""
    def body(carry, p):
        return mlp_block(p, *carry, norm=norm, epsilon=epsilon, activation=activation), None

    if remat:
        body = jax.checkpoint(body, policy=remat_policy)
    if scan:
        return lax.scan(body, (x, residual), params)[0]
    n = jax.tree.leaves(params)[0].shape[0]
    carry = (x, residual)
    for i in range(n):
        carry, _ = body(carry, jax.tree.map(lambda a: a[i], params))
    return carry
