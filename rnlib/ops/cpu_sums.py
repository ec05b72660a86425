"""Row and column sums arranged for XLA:CPU's fusion passes (used by the CPU path of ``rnlib.ops.norm_xla``).

Why they exist: XLA:CPU (jax 0.10) hands a plain ``jnp.sum`` to a YNN fusion. YNN cannot fuse the producers a
norm has (a bf16 -> f32 convert, a shift by a row's first element, a product with a broadcast statistic), so XLA
writes each of them out at full size first and YNN then reads it back; a layer norm's forward+backward moved about
18 |x| of memory that way. XLA's own loop emitter fuses any elementwise producer into a reduction, but it only
gets reductions YNN does not take -- variadic ones -- and it adds sequentially, which is slow for column sums and
loses precision on long rows. So each sum here is a variadic reduce over a split axis:

* rows: ``(R, W)`` viewed as ``(R, W/64, 64)`` and reduced over the middle axis (64 interleaved partial sums of
  at most 1024 terms each, vector-friendly), then over the 64 partials. Widths that do not split: ``row_sums2``
  uses ``jnp.sum``, ``row_sum`` its compensated sum along the whole row;
* columns: ``(R, W)`` viewed as ``(R/32, 32, W)`` and reduced over the middle axis, repeatedly, until at most
  32 partial rows are left for a pairwise tree of row adds (any ``R``).

The sums are linear, so each has a ``custom_jvp`` whose tangent is the plain ``jnp.sum`` of the tangents (JAX's
generic rule for variadic reduces fails on symbolic zero tangents and cannot be transposed): grad-of-grad through
the norms works. The arithmetic is ordinary float32 (float64) summation in a fixed order; precision is at the
level of ``jnp.sum`` (tests compare with float64 references).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

LANES = 64             # interleaved partial sums per row
MAX_LANE_TERMS = 1024  # longest sequential sum per lane (W / LANES) before falling back to jnp.sum
ROW_BLOCK = 32         # rows per partial column sum


def _pair(p: tuple[Array, Array], q: tuple[Array, Array]) -> tuple[Array, Array]:
    return p[0] + q[0], p[1] + q[1]


def _two_sum(p: tuple[Array, Array], q: tuple[Array, Array]) -> tuple[Array, Array]:
    """Add two (sum, rounding error) pairs; the new error term is exact (Knuth's TwoSum)."""
    total = p[0] + q[0]
    back = total - p[0]
    return total, p[1] + q[1] + ((p[0] - (total - back)) + (q[0] - back))


def _reduce(ops: tuple[Array, Array], reducer, axis: int) -> tuple[Array, Array]:
    zero = jnp.zeros((), ops[0].dtype)
    return tuple(lax.reduce(ops, (zero, zero), reducer, (axis,)))


def _row_split(a: Array) -> Array | None:
    rows, width = a.shape
    if width % LANES or width // LANES > MAX_LANE_TERMS:
        return None
    return a.reshape(rows, width // LANES, LANES)


def _linear(plain):
    """Give a sum the JVP ``plain(tangents)`` (the same sum, as ordinary transposable jnp ops)."""
    def wrap(fn):
        fn = jax.custom_jvp(fn)
        fn.defjvp(lambda primals, tangents: (fn(*primals), plain(*tangents)))
        return fn
    return wrap


@_linear(lambda a, b: (jnp.sum(a, axis=-1), jnp.sum(b, axis=-1)))
def row_sums2(a: Array, b: Array) -> tuple[Array, Array]:
    """``(sum(a, -1), sum(b, -1))`` for two ``(R, W)`` arrays, in one fused pass. Returns two ``(R,)`` arrays."""
    sa, sb = _row_split(a), _row_split(b)
    if sa is None:
        return jnp.sum(a, axis=-1), jnp.sum(b, axis=-1)
    return _reduce(_reduce((sa, sb), _pair, 1), _pair, 1)


@_linear(lambda a: jnp.sum(a, axis=-1))
def row_sum(a: Array) -> Array:
    """``sum(a, -1)`` of an ``(R, W)`` array, in one fused pass. Returns ``(R,)``.

    A single sum must still be variadic to stay on XLA's emitter, so it is a compensated (sum, error) pair:
    the second operand does useful work instead of being dead weight XLA would simplify away.
    """
    split = _row_split(a)
    if split is None:
        split = a[:, :, None]
    total, err = _reduce(_reduce((split, jnp.zeros_like(split)), _two_sum, 1), _two_sum, 1)
    return total + err


def _add_rows(a: Array) -> Array:
    """Sum of the rows of a short ``(r, W)`` array as a pairwise tree of row adds: one elementwise loop."""
    rows = [a[i] for i in range(a.shape[0])]
    while len(rows) > 1:
        rows = [rows[i] + rows[i + 1] if i + 1 < len(rows) else rows[i] for i in range(0, len(rows), 2)]
    return rows[0]


def _col_pair(a: Array, b: Array) -> tuple[Array, Array]:
    rows, width = a.shape
    if rows <= ROW_BLOCK:
        return _add_rows(a), _add_rows(b)
    head = rows - rows % ROW_BLOCK
    split = (head // ROW_BLOCK, ROW_BLOCK, width)
    pa, pb = _reduce((a[:head].reshape(split), b[:head].reshape(split)), _pair, 1)
    if head < rows:  # the last rows % 32 rows become one more partial row
        pa = jnp.concatenate([pa, _add_rows(a[head:])[None]])
        pb = jnp.concatenate([pb, _add_rows(b[head:])[None]])
    return _col_pair(pa, pb)


@_linear(lambda a, b: (jnp.sum(a, axis=0), jnp.sum(b, axis=0)))
def col_sums2(a: Array, b: Array) -> tuple[Array, Array]:
    """``(sum(a, 0), sum(b, 0))`` for two ``(R, W)`` arrays, in one fused pass. Returns two ``(W,)`` arrays.

    Blocks of 32 rows are summed on the emitter, giving ``ceil(R/32)`` partial rows, and again until at most 32
    remain, which a pairwise tree of row adds combines (XLA:CPU's column sum of a few long rows is the slowest
    case of all: 38x a copy's time for 16 x 65536).
    """
    return _col_pair(a, b)
