"""2-D convolution, NHWC x HWIO -> NHWC, with torch-style symmetric padding k//2 (so 3x3/2 maps H to ceil(H/2)).

Lowerings, chosen by the platform the caller compiles for and whether the call sits in a loop body:

* ``"cpu"``: small output maps (<= ``_SMALL_MAP_PIXELS`` pixels per image) as one patches-by-kernel matmul
  (im2col); inside a loop body (``in_loop``: ``lax.scan``, ``while``) also a custom VJP whose two cotangents are
  plain NHWC x HWIO convolutions. Autodiff's transposed convolutions inside a while loop fall back to a slow
  generic loop on XLA:CPU (a scanned ResNet-20 train step took 9.7x the time without the custom VJP), while
  outside loops they are the faster form (the custom VJP cost an unrolled ResNet-20 step 1.19x);
* anything else (GPU, TPU): XLA's convolution and autodiff's transpose rules.

The platform is an argument, resolved once by the public entry points (``conv2d``, ``residual_block``, ...) from
``jax.default_backend()`` when not given, so code traced for another platform can ask for its lowering.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from rnlib import _platforms

_NHWC = ("NHWC", "HWIO", "NHWC")

# At or below this many output pixels per image, the CPU path computes a convolution as one matmul over
# explicitly gathered patches: XLA:CPU's convolution is 5-12x slower there (e.g. 64x2x2x64 by a 3x3x64x64 kernel:
# 5.3 ms vs 0.43 ms), and such maps are common in the last stage of nets on small images (digits' 8x8 -> 2x2).
_SMALL_MAP_PIXELS = 16


def _out_size(size: int, k: int, stride: int) -> int:
    return (size + 2 * (k // 2) - k) // stride + 1


def _conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """XLA's convolution with padding k//2 on each side."""
    pad = [(k // 2, k // 2) for k in kernel.shape[:2]]
    return lax.conv_general_dilated(x, kernel, (stride, stride), pad, dimension_numbers=_NHWC)


def _conv_patches(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """``_conv`` as (N*Ho*Wo, kh*kw*Cin) @ (kh*kw*Cin, Cout); the patches are strided slices of the padded x."""
    (n, h, w, _), (kh, kw, ci, co) = x.shape, kernel.shape
    ho, wo = _out_size(h, kh, stride), _out_size(w, kw, stride)
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    cols = [xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            for i in range(kh) for j in range(kw)]  # (i, j, c) order matches kernel.reshape(kh * kw * ci, co)
    patches = jnp.concatenate(cols, axis=-1).reshape(n * ho * wo, kh * kw * ci)
    return (patches @ kernel.reshape(kh * kw * ci, co)).reshape(n, ho, wo, co)


def _conv_cpu_fwd_only(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    kh, kw = kernel.shape[:2]
    small = _out_size(x.shape[1], kh, stride) * _out_size(x.shape[2], kw, stride) <= _SMALL_MAP_PIXELS
    return _conv_patches(x, kernel, stride) if small else _conv(x, kernel, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_cpu(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return _conv_cpu_fwd_only(x, kernel, stride)


def _conv_cpu_fwd(x, kernel, stride):
    return _conv_cpu_fwd_only(x, kernel, stride), (x, kernel)


def _conv_cpu_bwd(stride, res, g):
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
        dx = _conv_cpu_fwd_only(g, flipped, 1)
    else:
        dx = lax.conv_general_dilated(g, flipped, (1, 1), pads, lhs_dilation=(stride, stride),
                                      dimension_numbers=_NHWC)
    # dkernel: channels of x as the batch, examples as the contraction, the cotangent as a dilated kernel.
    pads = [(k // 2, k + (out - 1) * stride - size - k // 2) for k, size, out in ((kh, h, ho), (kw, w, wo))]
    dk = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1), pads,
                                  rhs_dilation=(stride, stride), dimension_numbers=_NHWC)
    return dx, dk.transpose(1, 2, 0, 3).astype(kernel.dtype)


_conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


def conv_for(x: jax.Array, kernel: jax.Array, stride: int, platform: str, in_loop: bool = True) -> jax.Array:
    """The convolution lowered for ``platform`` (already resolved) and a call in or outside a loop body."""
    kernel = kernel.astype(x.dtype)
    if platform != "cpu":
        return _conv(x, kernel, stride)
    return _conv_cpu(x, kernel, stride) if in_loop else _conv_cpu_fwd_only(x, kernel, stride)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, *, platform: str | None = None,
           in_loop: bool = True) -> jax.Array:
    """NHWC (N, H, W, Cin) x HWIO (kh, kw, Cin, Cout) -> NHWC (N, ceil(H/stride), ceil(W/stride), Cout) for odd k.

    Padding k//2 on each side (torch's ``padding=k//2``); the kernel is cast to ``x.dtype``. ``platform`` selects
    the lowering (see the module docstring); ``None`` means ``jax.default_backend()``. ``in_loop=False`` states
    that the call is not inside a loop body (faster backward on CPU); the default is the form that is safe in one.
    """
    return conv_for(x, kernel, stride, _platforms.resolve(platform), in_loop)
