"""Argument handling shared by every norm, done once per call at trace time.

Validation: a wrong call fails loudly, naming the argument and the shapes (``ValueError``/``TypeError``), never a
silent wrong answer. Layout: Flax-style ``reduction_axes``/``feature_axes`` are checked against the input and
mapped to the 2-D ``(rows, width)`` form every backend works on -- normalised over the last axis with per-feature
parameters of shape ``(width,)`` -- and back (reshapes, and transposes for non-trailing reduction axes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Axes = Union[int, Sequence[int]]


def as_float_array(a: Any, name: str) -> jax.Array:
    """``jnp.asarray(a)``, raising TypeError unless it has a floating dtype."""
    arr = jnp.asarray(a)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype (float16/bfloat16/float32/float64), "
                        f"got {arr.dtype} with shape {arr.shape}")
    return arr


def check_epsilon(epsilon: Any, stats_dtype: Any = jnp.float32) -> float:
    """Return ``epsilon`` as a Python float; it must be static, finite and a normal number of ``stats_dtype``.

    A smaller epsilon rounds to 0 or to a subnormal that XLA:CPU and the kernels flush to 0, and a constant row
    would then give ``0 * rsqrt(0) = NaN``.
    """
    if isinstance(epsilon, jax.core.Tracer):
        raise TypeError("epsilon must be a static Python float, got a traced value")
    try:
        eps = float(epsilon)
    except (TypeError, ValueError):
        raise TypeError(f"epsilon must be a Python float, got {epsilon!r}") from None
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon!r}")
    tiny = float(jnp.finfo(stats_dtype).tiny)
    if eps < tiny:
        raise ValueError(f"epsilon={epsilon!r} is below the smallest normal {jnp.dtype(stats_dtype).name} "
                         f"({tiny:.3g}), in which the statistics are computed: it would act as 0 and a constant "
                         f"row would give NaN")
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


def normalize_axes(axes: Axes, ndim: int, name: str) -> tuple[int, ...]:
    """Return ``axes`` as sorted, non-negative, unique ints; ValueError naming ``name`` otherwise."""
    seq = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)
    if not seq:
        raise ValueError(f"{name} must name at least one axis, got {axes!r}")
    out = []
    for a in seq:
        if not isinstance(a, (int, np.integer)):
            raise TypeError(f"{name} must be ints, got {axes!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"{name}={axes!r} is out of range for an input of rank {ndim}")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={axes!r} repeats an axis (rank {ndim})")
    return tuple(sorted(out))


@dataclass(frozen=True)
class Layout:
    """How an input of ``shape`` maps to the 2-D form.

    Attributes:
      shape: the input's shape.
      reduction: normalised (reduced) axes; ``feature``: axes that carry a parameter entry.
      perm: transpose taking ``shape`` to ``(*kept axes, *reduction axes)``; identity when reductions trail.
      rows, width: the 2-D shape ``(R, W)``.
      features_in_rows: True when a feature axis is not reduced, so parameters vary per row and cannot be
        folded into a ``(W,)`` vector.
    """

    shape: tuple[int, ...]
    reduction: tuple[int, ...]
    feature: tuple[int, ...]
    perm: tuple[int, ...]
    rows: int
    width: int

    @property
    def features_in_rows(self) -> bool:
        return not set(self.feature) <= set(self.reduction)

    @property
    def param_shape(self) -> tuple[int, ...]:
        """Shape of scale/bias, as Flax gives it: the sizes of the feature axes."""
        return tuple(self.shape[a] for a in self.feature)

    @property
    def transposed(self) -> bool:
        return self.perm != tuple(range(len(self.shape)))

    def to_2d(self, x: jnp.ndarray) -> jnp.ndarray:
        if self.transposed:
            x = jnp.transpose(x, self.perm)
        return x.reshape(self.rows, self.width)

    def from_2d(self, y: jnp.ndarray) -> jnp.ndarray:
        moved = tuple(self.shape[a] for a in self.perm)
        y = y.reshape(moved)
        if self.transposed:
            y = jnp.transpose(y, np.argsort(self.perm))
        return y

    def param_to_width(self, p: jnp.ndarray) -> jnp.ndarray:
        """Broadcast a parameter of ``param_shape`` over the reduction axes and flatten to ``(W,)``.

        Only valid when ``not features_in_rows``.
        """
        red_shape = tuple(self.shape[a] for a in self.reduction)
        idx = {a: i for i, a in enumerate(self.feature)}
        # Put each feature axis in its place among the reduction axes, size 1 elsewhere.
        expanded = p.reshape(tuple(p.shape[idx[a]] if a in idx else 1 for a in self.reduction))
        return jnp.broadcast_to(expanded, red_shape).reshape(self.width)

    def param_to_full(self, p: jnp.ndarray) -> jnp.ndarray:
        """Reshape a parameter of ``param_shape`` so it broadcasts against the input (Flax's convention)."""
        idx = {a: i for i, a in enumerate(self.feature)}
        return p.reshape(tuple(p.shape[idx[a]] if a in idx else 1 for a in range(len(self.shape))))


def make_layout(shape: tuple[int, ...], reduction_axes: Axes, feature_axes: Axes) -> Layout:
    """Validate the axes against ``shape`` and build the :class:`Layout`."""
    ndim = len(shape)
    if ndim == 0:
        raise ValueError("x must have at least one axis to normalise, got a scalar (shape ())")
    red = normalize_axes(reduction_axes, ndim, "reduction_axes")
    feat = normalize_axes(feature_axes, ndim, "feature_axes")
    kept = tuple(a for a in range(ndim) if a not in red)
    width = int(np.prod([shape[a] for a in red], dtype=np.int64))
    rows = int(np.prod([shape[a] for a in kept], dtype=np.int64))
    if width == 0:
        raise ValueError(f"cannot normalise over empty axes {red} of x with shape {shape}")
    return Layout(tuple(shape), red, feat, kept + red, rows, width)


def param_shape(x_shape: Sequence[int], reduction_axes: Axes = -1, feature_axes: Axes = -1) -> tuple[int, ...]:
    """Shape of a norm's ``scale``/``bias`` for input shape ``x_shape``, as Flax gives it (the sizes of
    ``feature_axes``); raises like the norms do for invalid axes."""
    return make_layout(tuple(x_shape), reduction_axes, feature_axes).param_shape
