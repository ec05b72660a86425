"""Reference code: the layer/RMS norm a user writes by hand in jax.numpy, differentiated by autodiff.

This is the baseline rnlib's hand-written VJP and kernels must beat: statistics in float32 (two-pass variance), output
cast back to the input dtype, gradients from ``jax.vjp`` of these expressions. Shapes: x (..., D), scale/bias (D,).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def layer_norm(x: jax.Array, scale: jax.Array | None = None, bias: jax.Array | None = None, *,
               epsilon: float = 1e-6) -> jax.Array:
    """y = (x - mean) / sqrt(var + eps) * scale + bias over the last axis, computed in float32."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + epsilon)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


def rms_norm(x: jax.Array, scale: jax.Array | None = None, *, epsilon: float = 1e-6) -> jax.Array:
    """y = x / sqrt(mean(x^2) + eps) * scale over the last axis, computed in float32."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + epsilon)
    if scale is not None:
        y = y * scale
    return y.astype(x.dtype)


def add_norm(x: jax.Array, residual: jax.Array, scale: jax.Array | None = None, bias: jax.Array | None = None, *,
             norm: str = "layer", epsilon: float = 1e-6) -> tuple[jax.Array, jax.Array]:
    """The pre-norm residual step written plainly: h = x + residual; returns (norm(h), h)."""
    h = (x.astype(jnp.float32) + residual.astype(jnp.float32)).astype(residual.dtype)
    y = layer_norm(h, scale, bias, epsilon=epsilon) if norm == "layer" else rms_norm(h, scale, epsilon=epsilon)
    return y.astype(x.dtype), h
