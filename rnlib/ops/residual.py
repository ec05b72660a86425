"""Residual block maths (He et al. 2015, 2016) as pure functions over explicit pytrees.

One parameterised block covers every variant; the spec (a frozen, hashable dataclass) holds the static choices:

* kind "basic" (3x3, 3x3) or "bottleneck" (1x1, 3x3, 1x1 with ``expansion``; v1.5: the stride sits on the 3x3);
* order "post" (v1):  y = relu(s * F(x) + P(x)),  F = conv-norm-relu ... conv-norm;
  order "pre"  (v2):  y = s * F(x) + P(x),        F = norm-relu-conv ... norm-relu-conv;
* shortcut P: "A" identity, on a shape change stride subsampling plus zero channels appended (CIFAR option A);
  "B" 1x1 projection only on a shape change, else identity; "C" projection always; "none": no P (a plain net);
  in "pre" order a projection reads the pre-activated input relu(norm1(x)) (as in the v2 reference code),
  identity/option A read x;
* norm "batch" | "layer" | "rms" | "stats" (rnlib.ops norms over the channel axis, per position) | "none";
* ``zero_init_last``: F(x) = 0 at init (the last norm's scale when a norm follows the last conv, else the last
  conv's kernel); ``branch_scale``: a learnable scalar s initialised to 0 (ReZero/SkipInit), else s = 1.

Layout NHWC, kernels HWIO. Parameters are a dict ``{"conv1": {"kernel"}, "norm1": {"scale", "bias"[, "stats_scale"]},
..., "proj_conv", "proj_norm", "branch_scale"}``; BatchNorm running statistics a dict ``{"norm1": {"mean", "var"}}``.
A *stack* holds n identical blocks (stride 1, in == out) with every leaf stacked on a new leading axis and runs
them under ``lax.scan`` so that the traced program, hence compile time, does not grow with depth.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rnlib import ops as _norm_ops  # layer_norm / rms_norm / layer_norm_with_stats, looked up at call time

Params = dict[str, Any]
State = dict[str, Any]

KINDS = ("basic", "bottleneck")
ORDERS = ("post", "pre")
SHORTCUTS = ("A", "B", "C", "none")
NORMS = ("batch", "layer", "rms", "stats", "none")


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Static description of one residual block.

    ``features`` is the output width of a basic block and the inner width of a bottleneck (whose output is
    ``expansion * features``).
    """

    in_features: int
    features: int
    kind: str = "basic"
    order: str = "post"
    shortcut: str = "B"
    norm: str = "batch"
    stride: int = 1
    expansion: int = 4
    zero_init_last: bool = False
    branch_scale: bool = False
    momentum: float = 0.9  # running = momentum * running + (1 - momentum) * batch (torch's 0.1)
    epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for name, value, allowed in (("kind", self.kind, KINDS), ("order", self.order, ORDERS),
                                     ("shortcut", self.shortcut, SHORTCUTS), ("norm", self.norm, NORMS)):
            if value not in allowed:
                raise ValueError(f"BlockSpec: {name}={value!r}, expected one of {allowed}")
        if self.in_features < 1 or self.features < 1 or self.stride < 1 or self.expansion < 1:
            raise ValueError(f"BlockSpec: in_features, features, stride, expansion must be >= 1, got {self}")
        if not (0.0 <= self.momentum <= 1.0) or not self.epsilon > 0:
            raise ValueError(f"BlockSpec: momentum in [0, 1] and epsilon > 0 required, got "
                             f"momentum={self.momentum}, epsilon={self.epsilon}")
        if self.shortcut == "A" and self.out_features < self.in_features:
            raise ValueError(f"BlockSpec: shortcut 'A' pads channels and cannot shrink {self.in_features} -> "
                             f"{self.out_features}; use 'B' or 'C'")

    @property
    def out_features(self) -> int:
        return self.features * (self.expansion if self.kind == "bottleneck" else 1)

    @property
    def changes_shape(self) -> bool:
        return self.stride != 1 or self.in_features != self.out_features

    @property
    def projects(self) -> bool:
        return self.shortcut == "C" or (self.shortcut == "B" and self.changes_shape)

    def convs(self) -> list[tuple[int, int, int, int]]:
        """(kernel size, in channels, out channels, stride) of the branch's convolutions, in order."""
        f = self.features
        if self.kind == "basic":
            return [(3, self.in_features, f, self.stride), (3, f, f, 1)]
        return [(1, self.in_features, f, 1), (3, f, f, self.stride), (1, f, self.out_features, 1)]


# ----------------------------------------------------------------------------------------------- primitives

_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    pad = [(k // 2, k // 2) for k in kernel.shape[:2]]
    return lax.conv_general_dilated(x, kernel, (stride, stride), pad, dimension_numbers=_NHWC)


# At or below this many output pixels per image, the CPU path computes a convolution as one matmul over
# explicitly gathered patches: XLA:CPU's convolution is 5-12x slower there (e.g. 64x2x2x64 by a 3x3x64x64 kernel:
# 5.3 ms vs 0.43 ms), and such maps are common in the last stage of nets on small images (digits' 8x8 -> 2x2).
_SMALL_MAP_PIXELS = 16


def _conv_patches(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """``_conv`` as (N*Ho*Wo, kh*kw*Cin) @ (kh*kw*Cin, Cout); the patches are strided slices of the padded x."""
    (n, h, w, _), (kh, kw, ci, co) = x.shape, kernel.shape
    ho, wo = (h + 2 * (kh // 2) - kh) // stride + 1, (w + 2 * (kw // 2) - kw) // stride + 1
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    cols = [xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            for i in range(kh) for j in range(kw)]  # (i, j, c) order matches kernel.reshape(kh * kw * ci, co)
    patches = jnp.concatenate(cols, axis=-1).reshape(n * ho * wo, kh * kw * ci)
    return (patches @ kernel.reshape(kh * kw * ci, co)).reshape(n, ho, wo, co)


def _conv_cpu(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    kh, kw = kernel.shape[:2]
    ho, wo = ((size + 2 * (k // 2) - k) // stride + 1 for size, k in ((x.shape[1], kh), (x.shape[2], kw)))
    return _conv_patches(x, kernel, stride) if ho * wo <= _SMALL_MAP_PIXELS else _conv(x, kernel, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_canonical_vjp(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return _conv_cpu(x, kernel, stride)


def _conv_fwd(x, kernel, stride):
    return _conv_cpu(x, kernel, stride), (x, kernel)


def _conv_bwd(stride, res, g):
    """Both cotangents as plain NHWC x HWIO convolutions over explicitly transposed operands.

    Autodiff's transpose convolutions use permuted dimension numbers; inside a while loop (lax.scan) XLA:CPU
    cannot re-layout them and falls back to a slow generic loop (measured ~50x for the kernel gradient).
    """
    x, kernel = res
    (_, h, w, _), (kh, kw, _, _), (_, ho, wo, _) = x.shape, kernel.shape, g.shape
    # dx: the stride-dilated cotangent convolved with the flipped kernel, in and out channels swapped.
    pads = [(k - 1 - k // 2, size - (out - 1) * stride + k // 2 - 1) for k, size, out in ((kh, h, ho), (kw, w, wo))]
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    if stride == 1 and kh % 2 and kw % 2:  # then pads are (k//2, k//2): a same-size convolution like the forward
        dx = _conv_cpu(g, flipped, 1)
    else:
        dx = lax.conv_general_dilated(g, flipped, (1, 1), pads, lhs_dilation=(stride, stride),
                                      dimension_numbers=_NHWC)
    # dkernel: channels of x as the batch, examples as the contraction, the cotangent as a dilated kernel.
    pads = [(k // 2, k + (out - 1) * stride - size - k // 2) for k, size, out in ((kh, h, ho), (kw, w, wo))]
    dk = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1), pads,
                                  rhs_dilation=(stride, stride), dimension_numbers=_NHWC)
    return dx, dk.transpose(1, 2, 0, 3).astype(kernel.dtype)


_conv_canonical_vjp.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, *, canonical_vjp: bool | None = None) -> jax.Array:
    """NHWC x HWIO -> NHWC convolution with torch-style symmetric padding k//2 (so 3x3/2 maps H to ceil(H/2)).

    ``canonical_vjp`` (default: on when the default backend is the CPU) computes the backward pass with plain
    NHWC convolutions, which keeps XLA:CPU fast inside lax.scan, and small output maps (<= 16 pixels) as one
    patches-by-kernel matmul; GPUs/TPUs keep XLA's convolution and autodiff's transpose rules.
    """
    kernel = kernel.astype(x.dtype)
    if canonical_vjp is None:
        canonical_vjp = jax.default_backend() == "cpu"
    return _conv_canonical_vjp(x, kernel, stride) if canonical_vjp else _conv(x, kernel, stride)


def norm_init(kind: str, features: int, *, zero_scale: bool = False,
              prefix: tuple[int, ...] = ()) -> tuple[Params, State]:
    """Parameters and running state of one channel norm ({}, {} for "none"); ``prefix`` adds leading (stack) axes.

    Built with NumPy: constant initial values need no XLA compilation (eager jnp.ones compiles once per shape).
    """
    if kind == "none":
        return {}, {}
    shape = (*prefix, features)

    def const(value: float, shp: tuple[int, ...] = shape) -> jax.Array:
        return jnp.asarray(np.full(shp, value, np.float32))

    params: Params = {"scale": const(0.0 if zero_scale else 1.0)}
    if kind != "rms":
        params["bias"] = const(0.0)
    if kind == "stats":
        params["stats_scale"] = const(0.0, (*prefix, 2, features))
    state: State = {"mean": const(0.0), "var": const(1.0)} if kind == "batch" else {}
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
        return _norm_ops.layer_norm(x, params["scale"], params["bias"], epsilon=epsilon), state
    if kind == "rms":
        return _norm_ops.rms_norm(x, params["scale"], epsilon=epsilon), state
    if kind == "stats":
        return _norm_ops.layer_norm_with_stats(x, params["scale"], params["bias"], params["stats_scale"],
                                               epsilon=epsilon), state
    if kind != "batch":
        raise ValueError(f"normalize: kind={kind!r}, expected one of {NORMS}")
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if train:
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(xf, axis=axes)
        var = jnp.maximum(jnp.mean(jnp.square(xf - mean), axis=axes), 0.0)
        state = {"mean": momentum * state["mean"] + (1.0 - momentum) * lax.stop_gradient(mean),
                 "var": momentum * state["var"] + (1.0 - momentum) * lax.stop_gradient(var)}
    else:
        mean, var = state["mean"], state["var"]
    y = (xf - mean) * lax.rsqrt(var + epsilon) * params["scale"] + params["bias"]
    return y.astype(x.dtype), state


def shortcut_a(x: jax.Array, out_features: int, stride: int) -> jax.Array:
    """Option A: keep every ``stride``-th position and append zero channels up to ``out_features``."""
    if stride != 1:
        x = x[:, ::stride, ::stride, :]
    extra = out_features - x.shape[-1]
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
    return x


# -------------------------------------------------------------------------------------------------- block

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
            kernel = jnp.asarray(np.zeros((*prefix, k, k, cin, cout), np.float32))
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
        params["branch_scale"] = jnp.asarray(np.zeros(prefix, np.float32))
    return params, state


def check_block_input(x: jax.Array, spec: BlockSpec, name: str = "residual_block") -> None:
    """Raise a ValueError naming ``name`` unless x is a float NHWC array with ``spec.in_features`` channels."""
    if x.ndim != 4:
        raise ValueError(f"{name}: expected NHWC input of rank 4, got shape {x.shape}")
    if x.shape[-1] != spec.in_features:
        raise ValueError(f"{name}: expected {spec.in_features} input channels (last axis), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating-point input, got dtype {x.dtype}")


def residual_block(params: Params, state: State, x: jax.Array, spec: BlockSpec, *,
                   train: bool) -> tuple[jax.Array, State]:
    """Apply one residual (or plain) block: NHWC (N, H, W, in) -> (N, ceil(H/s), ceil(W/s), out).

    Returns (y, new_state); ``new_state`` equals ``state`` unless ``train`` with batch norm.
    """
    check_block_input(x, spec)
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
        h = conv2d(h, params[f"conv{i}"]["kernel"], stride)
        if spec.order == "post":
            h = norm(f"norm{i}", h)
            if i < len(convs):
                h = jax.nn.relu(h)
    if "branch_scale" in params:
        h = h * params["branch_scale"].astype(h.dtype)
    if spec.shortcut != "none":
        if spec.projects:
            sc = conv2d(pre, params["proj_conv"]["kernel"], spec.stride)
            sc = norm("proj_norm", sc)
        else:
            sc = shortcut_a(x, spec.out_features, spec.stride)
        h = h + sc
    if spec.order == "post":
        h = jax.nn.relu(h)
    return h, new_state


# -------------------------------------------------------------------------------------------------- stack

def stack_init(key: jax.Array, spec: BlockSpec, num_blocks: int) -> tuple[Params, State]:
    """``num_blocks`` independent block initialisations stacked on a new leading axis."""
    _check_stackable(spec, num_blocks)
    return block_init(key, spec, num_blocks)


def residual_stack(params: Params, state: State, x: jax.Array, spec: BlockSpec, *, train: bool,
                   scan: bool = True, remat: bool = False,
                   remat_policy: Callable[..., bool] | None = None) -> tuple[jax.Array, State]:
    """Apply n identical blocks (leaves stacked on axis 0) in sequence; returns (y, stacked new state).

    ``scan=True`` runs them under ``lax.scan`` (one traced block, compile time independent of n); ``scan=False``
    unrolls a Python loop (same result, for checking). ``remat`` wraps each block in ``jax.checkpoint`` with
    ``remat_policy`` (e.g. ``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``).
    """
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("residual_stack: empty parameter tree")
    n = leaves[0].shape[0]
    _check_stackable(spec, n)

    def body(h, ps):
        p, s = ps
        return residual_block(p, s, h, spec, train=train)

    if remat:
        body = jax.checkpoint(body, policy=remat_policy)
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


# ------------------------------------------------------------------------------------ residual MLP (pre-norm)

def mlp_block_init(key: jax.Array, features: int, hidden: int, *, norm: str = "layer",
                   zero_init_last: bool = False) -> Params:
    """Parameters of one pre-norm MLP block: norm (scale[, bias]), dense1 (D, H) + bias, dense2 (H, D) + bias."""
    if norm not in ("layer", "rms"):
        raise ValueError(f"mlp_block_init: norm={norm!r}, expected 'layer' or 'rms'")
    k1, k2 = jax.random.split(key)
    lecun = lecun_normal
    params: Params = {"norm": norm_init(norm, features)[0],
                      "dense1": {"kernel": lecun(k1, (features, hidden), jnp.float32),
                                 "bias": jnp.asarray(np.zeros((hidden,), np.float32))},
                      "dense2": {"kernel": (jnp.asarray(np.zeros((hidden, features), np.float32)) if zero_init_last
                                            else lecun(k2, (hidden, features), jnp.float32)),
                                 "bias": jnp.asarray(np.zeros((features,), np.float32))}}
    return params


def mlp_block(params: Params, x: jax.Array, residual: jax.Array, *, norm: str = "layer", epsilon: float = 1e-6,
              activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu) -> tuple[jax.Array, jax.Array]:
    """One pre-norm residual MLP block in residual-stream form (the fused ``add_norm`` pattern):

        r' = x + r,   y = norm(r'),   h = W2 act(W1 y + b1) + b2   ->  returns (h, r').

    Chaining blocks from (x0, 0) and finishing with ``add_norm(h, r)`` computes x_{l+1} = x_l + F_l(norm(x_l)).
    x, residual: (..., D); returns two (..., D) arrays.
    """
    p = params["norm"]
    y, new_residual = _norm_ops.add_norm(x, residual, p["scale"], p.get("bias"), norm=norm, epsilon=epsilon)
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
