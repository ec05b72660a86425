"""Residual block and stack maths (He et al. 2015, 2016) as pure functions over explicit pytrees.

One parameterised block covers every variant; a ``BlockSpec`` holds the static choices. Layout NHWC, kernels
HWIO. Parameters are a dict ``{"conv1": {"kernel"}, "norm1": {"scale", "bias"[, "stats_scale"]}, ...,
"proj_conv", "proj_norm", "branch_scale"}``; batch norm running statistics a dict ``{"norm1": {"mean", "var"}}``.
A *stack* holds n identical blocks (stride 1, in == out) with every leaf stacked on a new leading axis and runs
them in sequence, under ``lax.scan`` (the traced program, hence compile time, does not grow with depth) or
unrolled.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from rnlib.ops._block_spec import BlockSpec
from rnlib.ops._channel_norms import STATS_NAME, norm_init, normalize
from rnlib._platforms import resolve as resolve_platform
from rnlib.ops._conv import conv_for
from rnlib.ops._init import constant, he_normal

Params = dict[str, Any]
State = dict[str, Any]

CONV_NAME = "rnlib_conv"  # convolution outputs, named for checkpoint policies
# What a scanned stack keeps for its backward pass: convolution outputs and batch statistics. The elementwise
# rest (normalised values, ReLU masks, x - mean) is recomputed there, fused into its consumers. Keeping every
# residual instead writes ~8 activation-sized arrays per block into the scan's stacked buffers, which XLA cannot
# fuse across the loop boundary: CPU train steps took 1.41x (ResNet-56) and 1.14x (ResNet-20) as long that way
# (benchmarks/scan_vs_unrolled.py, scan_save_all vs scan, batch 32). Unrolled blocks need no policy: XLA fuses
# the same recomputation itself.
SCAN_POLICY = jax.checkpoint_policies.save_only_these_names(CONV_NAME, STATS_NAME)


def shortcut_a(x: jax.Array, out_features: int, stride: int) -> jax.Array:
    """Option A: keep every ``stride``-th position and append zero channels up to ``out_features``."""
    if stride != 1:
        x = x[:, ::stride, ::stride, :]
    extra = out_features - x.shape[-1]
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
    return x


def block_init(key: jax.Array, spec: BlockSpec, num_blocks: int | None = None) -> tuple[Params, State]:
    """Initial (params, batch-norm state) of one block: He-normal (fan-out) kernels, unit scales, zero biases.

    With ``num_blocks`` every leaf gets a leading axis of that size (independent draws per block): a stack.
    """
    prefix = () if num_blocks is None else (num_blocks,)
    convs = spec.convs()
    keys = jax.random.split(key, len(convs) + 1)
    params: Params = {}
    state: State = {}
    last = len(convs)
    for i, ((k, cin, cout, _), key_i) in enumerate(zip(convs, keys), start=1):
        # The last norm follows the last conv only in post order; otherwise zero the last kernel.
        zero_norm = spec.zero_init_last and i == last and spec.order == "post" and spec.norm != "none"
        if spec.zero_init_last and i == last and not zero_norm:
            kernel = constant((*prefix, k, k, cin, cout))
        else:
            kernel = he_normal(key_i, (k, k, cin, cout), prefix)
        params[f"conv{i}"] = {"kernel": kernel}
        p, s = norm_init(spec.norm, cout if spec.order == "post" else cin, zero_scale=zero_norm, prefix=prefix)
        if p:
            params[f"norm{i}"] = p
        if s:
            state[f"norm{i}"] = s
    if spec.projects:
        params["proj_conv"] = {"kernel": he_normal(keys[-1], (1, 1, spec.in_features, spec.out_features), prefix)}
        if spec.order == "post":  # in pre order the projection reads an already normalised input
            p, s = norm_init(spec.norm, spec.out_features, prefix=prefix)
            if p:
                params["proj_norm"] = p
            if s:
                state["proj_norm"] = s
    if spec.branch_scale:
        params["branch_scale"] = constant(prefix)
    return params, state


def check_block_input(x: jax.Array, spec: BlockSpec, name: str = "residual_block") -> None:
    """Raise a ValueError naming ``name`` unless x is a float NHWC array with ``spec.in_features`` channels."""
    if x.ndim != 4:
        raise ValueError(f"{name}: expected NHWC input of rank 4, got shape {x.shape}")
    if x.shape[-1] != spec.in_features:
        raise ValueError(f"{name}: expected {spec.in_features} input channels (last axis), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating-point input, got dtype {x.dtype}")


def _block(params: Params, state: State, x: jax.Array, spec: BlockSpec, train: bool, platform: str,
           in_loop: bool) -> tuple[jax.Array, State]:
    """``residual_block`` for a resolved ``platform``, without the input checks."""
    new_state: State = {}

    def norm(name: str, h: jax.Array) -> jax.Array:
        if name not in params:
            return h
        y, s = normalize(params[name], state.get(name, {}), h, spec.norm, train=train, momentum=spec.momentum,
                         epsilon=spec.epsilon)
        if s:
            new_state[name] = s
        return y

    convs = spec.convs()
    h, pre = x, x
    for i, (_, _, _, stride) in enumerate(convs, start=1):
        if spec.order == "pre":
            h = jax.nn.relu(norm(f"norm{i}", h))
            if i == 1:
                pre = h
        h = checkpoint_name(conv_for(h, params[f"conv{i}"]["kernel"], stride, platform, in_loop), CONV_NAME)
        if spec.order == "post":
            h = norm(f"norm{i}", h)
            if i < len(convs):
                h = jax.nn.relu(h)
    if "branch_scale" in params:
        h = h * params["branch_scale"].astype(h.dtype)
    if spec.shortcut != "none":
        if spec.projects:
            sc = conv_for(pre, params["proj_conv"]["kernel"], spec.stride, platform, in_loop)
            sc = checkpoint_name(sc, CONV_NAME)
            sc = norm("proj_norm", sc)
        else:
            sc = shortcut_a(x, spec.out_features, spec.stride)
        h = h + sc
    if spec.order == "post":
        h = jax.nn.relu(h)
    return h, new_state


def residual_block(params: Params, state: State, x: jax.Array, spec: BlockSpec, *, train: bool,
                   platform: str | None = None, in_loop: bool = True) -> tuple[jax.Array, State]:
    """Apply one residual (or plain) block: NHWC (N, H, W, in) -> (N, ceil(H/s), ceil(W/s), out).

    Returns (y, new_state); ``new_state`` equals ``state`` unless ``train`` with batch norm. ``platform``,
    ``in_loop``: the convolutions' lowering (``rnlib.ops.conv2d``; ``None`` = the default backend's).
    """
    check_block_input(x, spec)
    return _block(params, state, x, spec, train, resolve_platform(platform), in_loop)


def stack_init(key: jax.Array, spec: BlockSpec, num_blocks: int) -> tuple[Params, State]:
    """``num_blocks`` independent block initialisations stacked on a new leading axis."""
    _check_stackable(spec, num_blocks)
    return block_init(key, spec, num_blocks)


def residual_stack(params: Params, state: State, x: jax.Array, spec: BlockSpec, *, train: bool,
                   scan: bool = True, remat: bool = False, remat_policy: Callable[..., bool] | None = None,
                   platform: str | None = None) -> tuple[jax.Array, State]:
    """Apply n identical blocks (leaves stacked on axis 0) in sequence; returns (y, stacked new state).

    ``scan=True`` runs them under ``lax.scan`` (one traced block, compile time independent of n) keeping only
    ``SCAN_POLICY``'s residuals; ``scan=False`` unrolls a Python loop (same result). ``remat`` wraps each block in
    ``jax.checkpoint`` with ``remat_policy`` instead (``None`` saves nothing; e.g.
    ``jax.checkpoint_policies.save_only_these_names(CONV_NAME)``). ``platform`` as in ``residual_block``; the
    unrolled blocks take the lowering for calls outside a loop body.
    """
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("residual_stack: empty parameter tree")
    n = leaves[0].shape[0]
    _check_stackable(spec, n)
    check_block_input(x, spec, "residual_stack")
    platform = resolve_platform(platform)

    def body(h, ps):
        p, s = ps
        return _block(p, s, h, spec, train, platform, in_loop=scan)

    if remat:
        body = jax.checkpoint(body, policy=remat_policy)
    elif scan:
        body = jax.checkpoint(body, policy=SCAN_POLICY, prevent_cse=False)  # no CSE across iterations anyway
    if scan:
        return lax.scan(body, x, (params, state))
    outs = []
    for i in range(n):
        x, s = body(x, jax.tree.map(lambda a: a[i], (params, state)))
        outs.append(s)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *outs) if state else state


def _check_stackable(spec: BlockSpec, n: int) -> None:
    if n < 1:
        raise ValueError(f"residual stack: num_blocks must be >= 1, got {n}")
    if spec.changes_shape:
        raise ValueError(f"residual stack: blocks must keep the shape (stride 1, in == out), got {spec}")
