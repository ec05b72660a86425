"""Gradient autocorrelation along a line of inputs ("shattered gradients", Balduzzi et al. 2017).

Walk a 1-D line through input space, ``x(t) = x0 + t * v`` for ``n`` evenly spaced ``t`` in ``[-span, span]``,
take the gradient of a scalar output at each point, ``g_i = df/dx (x(t_i))``, and ask how similar nearby
gradients are. Shallow and residual nets give smooth ("brown-noise") gradient sequences whose correlation decays
slowly with the lag; deep plain nets give "white-noise" gradients that are uncorrelated already at lag 1, which
is what makes them hard to train with first-order methods although the gradient norms do not vanish.

Estimator (gradients flattened to vectors ``a_i = g_i - m``; ``m`` the mean gradient along the line when
``centered``, else 0):

    C(k) = sum_{i<n-k} <a_i, a_{i+k}> / sqrt( sum_{i<n-k} |a_i|^2  *  sum_{i<n-k} |a_{i+k}|^2 )

i.e. the Pearson-style correlation between the sequence and itself shifted by ``k``; ``C(0) = 1`` and
``|C(k)| <= 1`` (Cauchy-Schwarz). Unlike the textbook biased estimator it does not decay by ``(n-k)/n`` for a
perfectly smooth sequence, so a function with constant gradient gives exactly 1 at all lags (``centered=False``).
For a scalar input this is the usual autocorrelation Balduzzi et al. plot. White noise gives ``~N(0, 1/(n d))``
at every lag >= 1.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def line_inputs(x0: jax.Array, direction: jax.Array, *, num_points: int = 256, span: float = 2.0):
    """``(ts, xs)``: ``ts`` of shape ``(n,)`` evenly spaced in ``[-span, span]``; ``xs = x0 + ts * direction``
    of shape ``(n, *x0.shape)``."""
    x0 = jnp.asarray(x0)
    direction = jnp.asarray(direction, x0.dtype)
    if x0.shape != direction.shape:
        raise ValueError(f"direction: shape {direction.shape} must equal x0's shape {x0.shape}")
    if num_points < 2:
        raise ValueError(f"num_points: need at least 2 points on the line, got {num_points}")
    if not span > 0:
        raise ValueError(f"span: must be > 0, got {span}")
    ts = jnp.linspace(-span, span, num_points, dtype=x0.dtype)
    xs = x0[None] + ts.reshape((-1,) + (1,) * x0.ndim) * direction[None]
    return ts, xs


def line_gradients(
    fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    direction: jax.Array,
    *,
    num_points: int = 256,
    span: float = 2.0,
    batched: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Gradients of a scalar function at ``num_points`` points along the line ``x0 + t * direction``.

    Args:
      fn: if ``batched`` is False, ``fn(x) -> scalar`` for one input of ``x0``'s shape (it is ``vmap``-ed).
        If ``batched`` is True, ``fn(xs) -> (n,)`` (or a scalar) for the whole line at once, and the gradient
        is that of ``sum(fn(xs))`` with respect to ``xs`` — use this for models whose output for one input
        depends on the batch (BatchNorm in training mode: the line itself is then the batch, as in
        Balduzzi et al.'s BatchNorm measurements).
      x0, direction: arrays of the same shape (one input, no batch axis).

    Returns:
      ``(ts, grads)`` with ``ts`` of shape ``(n,)`` and ``grads`` of shape ``(n, *x0.shape)``.
    """
    ts, xs = line_inputs(x0, direction, num_points=num_points, span=span)
    if batched:
        grads = jax.jit(jax.grad(lambda z: jnp.sum(fn(z))))(xs)
    else:
        grads = jax.jit(jax.vmap(jax.grad(fn)))(xs)
    return ts, grads


def gradient_autocorrelation(
    grads: jax.Array, max_lag: int | None = None, *, centered: bool = True, degenerate_tol: float = 1e-12
) -> np.ndarray:
    """Autocorrelation ``C(k)`` for ``k = 0..max_lag`` of a sequence of gradients (see the module docstring).

    Args:
      grads: ``(n, ...)``; axis 0 runs along the line, the rest is flattened into one vector per point.
      max_lag: largest lag (default ``n // 4``; must be < n).
      centered: subtract the mean gradient along the line first (Balduzzi et al.'s autocorrelation); if False,
        correlate the raw gradients (the cosine similarity of gradients ``k`` steps apart, energy-weighted).
      degenerate_tol: when centering leaves no variation (``sum |a_i|^2 <= tol * sum |g_i|^2``, e.g. a linear
        function whose gradient is the same everywhere) the sequence is perfectly correlated: ones are
        returned rather than 0/0.

    Returns:
      float64 NumPy array of shape ``(max_lag + 1,)`` with ``C(0) = 1``. Computed in float64 on the host.
    """
    g = np.asarray(grads, dtype=np.float64)
    if g.ndim < 1 or g.shape[0] < 2:
        raise ValueError(f"grads: need shape (n >= 2, ...), got {g.shape}")
    n = g.shape[0]
    g = g.reshape(n, -1)
    max_lag = n // 4 if max_lag is None else int(max_lag)
    if not 0 <= max_lag < n:
        raise ValueError(f"max_lag: must be in [0, {n - 1}] for {n} points, got {max_lag}")
    if not np.all(np.isfinite(g)):
        raise ValueError("grads: contains NaN or inf")
    a = g - g.mean(axis=0, keepdims=True) if centered else g
    energy = float(np.sum(a * a))
    if energy <= degenerate_tol * max(float(np.sum(g * g)), np.finfo(np.float64).tiny):
        return np.ones(max_lag + 1)
    sq = np.sum(a * a, axis=1)
    out = np.empty(max_lag + 1)
    for k in range(max_lag + 1):
        num = float(np.sum(a[: n - k] * a[k:]))
        den = float(np.sqrt(np.sum(sq[: n - k]) * np.sum(sq[k:])))
        out[k] = num / den if den > 0 else 0.0
    return out


def correlation_length(acf: np.ndarray, threshold: float = float(np.exp(-1.0))) -> float:
    """First lag at which the autocorrelation drops below ``threshold`` (default 1/e), linearly interpolated
    between neighbouring lags; ``len(acf)`` if it never does. Larger = smoother gradients."""
    acf = np.asarray(acf, dtype=np.float64)
    below = np.nonzero(acf < threshold)[0]
    if below.size == 0:
        return float(len(acf))
    k = int(below[0])
    if k == 0:
        return 0.0
    hi, lo = acf[k - 1], acf[k]
    return float(k - 1 + (hi - threshold) / (hi - lo))


class Shattering(NamedTuple):
    """Result of :func:`shattering`: the line, its gradients and their autocorrelation."""

    ts: np.ndarray  # (n,)
    grad_norms: np.ndarray  # (n,) |df/dx| at each point
    acf: np.ndarray  # (max_lag + 1,)
    correlation_length: float  # lags, see correlation_length()


def shattering(
    fn: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    direction: jax.Array,
    *,
    num_points: int = 256,
    span: float = 2.0,
    max_lag: int | None = None,
    batched: bool = False,
    centered: bool = True,
) -> Shattering:
    """One call: gradients along the line, their autocorrelation and its correlation length.

    ``fn``/``batched`` as in :func:`line_gradients`. Example for an NNX classifier ``model`` and an image ``x``::

        w = jax.random.normal(key, (num_classes,))          # a fixed random read-out of the logits
        f = lambda z: model(z[None])[0] @ w
        s = rnlib.diagnostics.shattering(f, x, jax.random.normal(key2, x.shape) * 0.1)
        s.acf[1], s.correlation_length
    """
    ts, grads = line_gradients(fn, x0, direction, num_points=num_points, span=span, batched=batched)
    acf = gradient_autocorrelation(grads, max_lag, centered=centered)
    gn = np.sqrt(np.sum(np.asarray(grads, np.float64).reshape(grads.shape[0], -1) ** 2, axis=1))
    return Shattering(np.asarray(ts), gn, acf, correlation_length(acf))
