"""Trace-time input checks shared by every norm: a wrong call fails loudly, naming the argument and shapes."""
from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np


def as_float_array(a: Any, name: str) -> jax.Array:
    """``jnp.asarray(a)``, raising TypeError unless it has a floating dtype."""
    arr = jnp.asarray(a)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype (float16/bfloat16/float32/float64), "
                        f"got {arr.dtype} with shape {arr.shape}")
    return arr


def check_epsilon(epsilon: Any) -> float:
    """Return ``epsilon`` as a Python float; it must be static, finite and > 0."""
    if isinstance(epsilon, jax.core.Tracer):
        raise TypeError("epsilon must be a static Python float, got a traced value")
    try:
        eps = float(epsilon)
    except (TypeError, ValueError):
        raise TypeError(f"epsilon must be a Python float, got {epsilon!r}") from None
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon!r}")
    return eps


def check_param(p: Any, name: str, expected: tuple[int, ...], x_shape: tuple[int, ...],
                feature_axes: tuple[int, ...]) -> Optional[jax.Array]:
    """Validate a per-feature parameter (None passes through)."""
    if p is None:
        return None
    arr = as_float_array(p, name)
    if arr.shape != expected:
        raise ValueError(f"{name} has shape {arr.shape}, but x of shape {x_shape} with feature_axes="
                         f"{feature_axes} needs {expected}")
    return arr


def check_residual(residual: Any, x_shape: tuple[int, ...]) -> jax.Array:
    arr = as_float_array(residual, "residual")
    if arr.shape != tuple(x_shape):
        raise ValueError(f"residual has shape {arr.shape} but x has shape {tuple(x_shape)}; they must match")
    return arr


def check_dtype(dtype: Any, name: str) -> Optional[np.dtype]:
    """Validate an optional floating output/storage dtype."""
    if dtype is None:
        return None
    dt = jnp.dtype(dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{name} must be a floating dtype, got {dt}")
    return dt


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
