"""XLA implementation of the 2-D norm forward and backward (the contract the Pallas kernels also implement).

Shapes: ``x``, ``residual``, ``h``, ``dy``: ``(R, W)``; ``scale``, ``bias``: ``(W,)``; ``mean``, ``rstd``: ``(R,)``.

Forward (``rms=False``; for ``rms=True`` take ``mean = 0``)::

    h    = x + residual                      (if a residual is given, rounded to residual_dtype)
    mean = sum(h) / W
    var  = max(sum((h - mean)^2) / W, 0)     two passes, never E[h^2] - E[h]^2
    rstd = rsqrt(var + eps),   x_hat = (h - mean) * rstd,   y = x_hat * scale + bias

Backward, with ``g = dy * scale``::

    dx     = rstd * (g - x_hat * mean(g * x_hat) - mean(g)) + dh_extra     (no ``mean(g)`` term for RMS)
    dscale = sum_rows(dy * x_hat),   dbias = sum_rows(dy)

Statistics are computed in float32 (float64 for float64 input). For precision when ``|mean| >> std``
(e.g. mean 1e4, std 1e-2, where a float32 mean alone is off by ~10 % of the std), each row is first shifted
by its first element ``c = h[:, 0]`` (an exact subtraction for nearby values), so the returned ``mean`` is
the mean of ``h - c`` (0 for RMS) and ``x_hat = ((h - c) - mean) * rstd``. This saved form is private to this
backend's forward/backward pair; :func:`true_mean` recovers the row mean.

On CPU (``platform="cpu"``), for problems of at least 65536 elements, the backward, the layer-norm forward of
bf16/f16 input, and any forward whose statistics feed a backward in the same program (:func:`norm_fwd_for_backward`),
run as a few fused passes over memory that XLA:CPU's fusion does not find on its own (:mod:`rnlib.ops.cpu_sums`):
forward = mean pass, variance pass, output pass; backward = row sums, column sums (dscale/dbias), dx. That
variance adds the corrected-two-pass term, ``var = (sum(d^2) - sum(d)^2 / W) / W`` with ``d = (h - c) - mean``
(zero in exact arithmetic, it cancels a rounding error in ``mean``). Smaller problems, other forwards on their
own (one fused loop already), and other platforms, whose compilers fuse well, keep the plain expressions above.
``ARRANGE_MIN_SIZE`` records the measurements.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import lax

from rnlib.ops import cpu_sums

Array = jax.Array


def compute_dtype(*dtypes: Any) -> jnp.dtype:
    """float64 if any input is float64, else float32: the dtype statistics are kept in."""
    return jnp.dtype(jnp.float64) if any(jnp.dtype(d) == jnp.float64 for d in dtypes if d is not None) \
        else jnp.dtype(jnp.float32)


def _shifted(hf: Array, rms: bool) -> Array:
    """``hf - hf[:, :1]`` for layer norm (see module docstring), ``hf`` itself for RMS norm."""
    return hf if rms else hf - hf[:, :1]


def true_mean(h: Array, mean: Array) -> Array:
    """The row mean ``(R,)`` from the saved (shifted) ``mean`` of a layer norm and its input ``h``."""
    return h[:, 0].astype(mean.dtype) + mean


def x_hat(h: Array, mean: Array, rstd: Array, rms: bool) -> Array:
    """Normalised input ``(R, W)`` in the statistics dtype, from the saved statistics."""
    return (_shifted(h.astype(mean.dtype), rms) - mean[:, None]) * rstd[:, None]


def row_stats(hf: Array, epsilon: float, rms: bool) -> tuple[Array, Array, Array]:
    """Two-pass statistics of a float32/64 ``(R, W)`` array: ``(centred (R, W), mean (R,), rstd (R,))``."""
    s = _shifted(hf, rms)
    if rms:
        mean, d = jnp.zeros(hf.shape[:-1], hf.dtype), s
    else:
        mean = jnp.mean(s, axis=-1)
        d = s - mean[:, None]
    var = jnp.maximum(jnp.mean(jnp.square(d), axis=-1), 0)
    return d, mean, lax.rsqrt(var + jnp.asarray(epsilon, hf.dtype))


# Where the CPU arrangement pays (2 cores, jax 0.10.2, forward+backward time over the plain expressions', from
# benchmarks/xla_cpu_arrangement.py): 0.2-0.5 from 4096 x 256 up, 0.1 for 16 x 65536 (XLA's plain column sum of
# a few long rows is pathological), 0.5-0.9 at 64K-1M elements (64 x 1024 ... 1024 x 1024, 512 x 128, 1024 x 64),
# but 1.1-1.8 at 16K-32K elements (16 x 1024, 32 x 1024, 64 x 256, 256 x 128), where the extra loops' fixed
# costs dominate.
ARRANGE_MIN_SIZE = 65536


def _arranged(platform: str, shape: tuple[int, ...]) -> bool:
    """Whether to use the XLA:CPU arrangement (module docstring) for a ``(R, W)`` problem."""
    return platform == "cpu" and shape[0] * shape[1] >= ARRANGE_MIN_SIZE


def _row_stats_cpu(src: Array, cdt: Any, epsilon: float, rms: bool) -> tuple[Array, Array]:
    """``(mean, rstd)`` of a ``(R, W)`` array, as two fused passes on XLA:CPU (see :mod:`rnlib.ops.cpu_sums`)."""
    width = src.shape[-1]
    if rms:
        return jnp.zeros(src.shape[:-1], cdt), lax.rsqrt(cpu_sums.row_sum(jnp.square(src.astype(cdt))) / width
                                                          + jnp.asarray(epsilon, cdt))
    s = _shifted(src.astype(cdt), rms)
    mean = cpu_sums.row_sum(s) / width
    d = s - mean[:, None]
    sq, sd = cpu_sums.row_sums2(jnp.square(d), d)
    var = jnp.maximum(sq - jnp.square(sd) / width, 0) / width  # corrected two-pass (see module docstring)
    return mean, lax.rsqrt(var + jnp.asarray(epsilon, cdt))


def _plain_row_sums(*arrays: Array) -> tuple[Array, ...]:
    return tuple(jnp.sum(a, axis=-1) for a in arrays)


def _plain_col_sums(*arrays: Array) -> tuple[Array, ...]:
    return tuple(jnp.sum(a, axis=0) for a in arrays)


def norm_fwd(x: Array, residual: Optional[Array], scale: Optional[Array], bias: Optional[Array], *,
             epsilon: float, rms: bool, out_dtype: Any, residual_dtype: Any = None,
             platform: str = "cpu", for_backward: bool = False) -> tuple[Array, Optional[Array], Array, Array]:
    """Return ``(y, h, mean, rstd)``; ``h`` is the new residual (``None`` without a residual).

    ``for_backward``: the statistics are saved for a backward pass in the same program (see
    :func:`norm_fwd_for_backward`); on CPU every forward of an arranged size then takes the arranged passes.
    """
    cdt = compute_dtype(x.dtype, None if residual is None else residual.dtype)
    h = None
    if residual is not None:
        h = (x.astype(cdt) + residual.astype(cdt)).astype(residual_dtype)
    src = x if h is None else h
    if _arranged(platform, src.shape) and (for_backward or (src.dtype != cdt and not rms)):
        # A forward on its own is one fused (YNN) loop in the plain form, except for a bf16/f16 layer norm: its
        # shift reads src a second time, and then XLA:CPU writes a float32 copy of src first. Next to a backward,
        # XLA:CPU shares x_hat with it and writes out the centred input, a broadcast rstd and x_hat to do so.
        mean, rstd = _row_stats_cpu(src, cdt, epsilon, rms)
        y = x_hat(src, mean, rstd, rms)
    else:
        d, mean, rstd = row_stats(src.astype(cdt), epsilon, rms)
        y = d * rstd[:, None]
    if scale is not None:
        y = y * scale.astype(cdt)
    if bias is not None:
        y = y + bias.astype(cdt)
    return y.astype(out_dtype), h, mean, rstd


def norm_fwd_for_backward(*args: Any, **kwargs: Any) -> tuple[Array, Optional[Array], Array, Array]:
    """:func:`norm_fwd` when its statistics are saved for :func:`norm_bwd` (the custom VJP's forward rule)."""
    return norm_fwd(*args, **kwargs, for_backward=True)


def norm_bwd(dy: Array, h: Array, mean: Array, rstd: Array, scale: Optional[Array],
             dh_extra: Optional[Array], *, rms: bool, has_bias: bool, dx_dtype: Any,
             platform: str = "cpu") -> tuple[Array, Optional[Array], Optional[Array]]:
    """Return ``(dx, dscale, dbias)`` for the forward above; ``dscale``/``dbias`` in the statistics dtype."""
    cdt = mean.dtype
    arranged = _arranged(platform, h.shape)
    row_sums = cpu_sums.row_sums if arranged else _plain_row_sums
    col_sums = cpu_sums.col_sums if arranged else _plain_col_sums
    width = h.shape[-1]
    xhat = x_hat(h, mean, rstd, rms)
    dyf = dy.astype(cdt)
    g = dyf * scale.astype(cdt) if scale is not None else dyf
    # Only the sums that are used: an unused half of a pair would be dropped by XLA, and the lone sum left
    # would go to YNN (see cpu_sums); the single-array sums stay on the emitter.
    sums = row_sums(g * xhat) if rms else row_sums(g * xhat, g)
    inner = g - xhat * (sums[0] / width)[:, None]
    if not rms:
        inner = inner - (sums[1] / width)[:, None]
    dx = rstd[:, None] * inner
    if scale is not None and has_bias:
        dscale, dbias = col_sums(dyf * xhat, dyf)
    else:
        dscale = col_sums(dyf * xhat)[0] if scale is not None else None
        dbias = col_sums(dyf)[0] if has_bias else None
    if dh_extra is not None:
        dx = dx + dh_extra.astype(cdt)
    return dx.astype(dx_dtype), dscale, dbias
