"""Axis handling shared by every norm: validate Flax-style axes and move to/from the 2-D ``(rows, width)`` form.

The kernels and the XLA implementation only ever see ``(R, W)`` arrays normalised over the last axis with
per-feature parameters of shape ``(W,)``. This module owns the reshapes (and, for non-trailing reduction axes, the
transposes) that get any input there and back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import jax.numpy as jnp
import numpy as np

Axes = Union[int, Sequence[int]]


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
