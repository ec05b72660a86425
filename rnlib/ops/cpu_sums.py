"""Row and column sums arranged for XLA:CPU's fusion passes (used by the CPU path of ``rnlib.ops.norm_xla``).

Why they exist: XLA:CPU (jax 0.10) hands a plain ``jnp.sum`` to a YNN fusion. YNN cannot fuse the producers a
norm has (a bf16 -> f32 convert, a shift by a row's first element, a product with a broadcast statistic), so XLA
writes each of them out at full size first and YNN then reads it back; a layer norm's forward+backward moved about
18 |x| of memory that way. XLA's own loop emitter fuses any elementwise producer into a reduction, but it only
gets reductions YNN does not take -- variadic ones -- and it adds sequentially, which is slow for column sums and
loses precision on long rows. So each sum here is a variadic reduce over a split axis:

* rows: ``(R, W)`` viewed as ``(R, 16, W/16)`` and reduced over the middle axis, repeatedly while the partials
  split and are more than 16 wide, then along the remaining partials (sequentially up to 1024 of them, else by
  ``jnp.sum`` on the now 16x smaller array). When 16 does not divide ``W``, the last ``W % 16`` columns are
  summed on their own (sequentially, in the same pass) and added;
* columns: ``(R, W)`` viewed as ``(R/8, 8, W)`` and reduced over the middle axis, then in blocks of 32 rows,
  repeatedly, until at most 32 partial rows are left for a pairwise tree of row adds (any ``R``).

Why 16 and 8: the emitter vectorises such a reduce across the kept minor axis, and on the 2-core AVX-512 machine
both were sharp optima in side-by-side stage timings. The mean pass over 4096 float32 rows took 0.65x a copy's time
with 16 terms per partial and 2.3x with 32 at width 1024 (0.25x and 0.77x at width 4096). A first column block of 8
rows (it carries the norm's fused producers) ran at 0.2-1.2x a copy, of 32 rows at 1.4-4.9x, and of 16 rows at
0.2-1.1x for float32 but 1.3-6.6x for bf16 input.

The sums are linear, so each has a ``custom_jvp`` whose tangent is the plain ``jnp.sum`` of the tangents (JAX's
generic rule for variadic reduces fails on symbolic zero tangents and cannot be transposed): grad-of-grad through
the norms works. The arithmetic is ordinary float32 (float64) summation in a fixed order; precision is at the
level of ``jnp.sum`` (tests compare with float64 references).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

TERMS = 16         # terms per partial row sum (the reduced middle axis)
MAX_LANES = 16     # split row partials again while they are wider than this (and split)
MAX_SEQUENTIAL = 1024  # longest sequential sum of partials before falling back to jnp.sum on them
COL_BLOCK = 8      # rows per partial column sum at the first level, where the norm's producers are fused
ROW_BLOCK = 32     # rows per partial column sum at later levels (plain partial rows)


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


def _row_partials(ops: tuple[Array, Array], reducer) -> tuple[Array, Array]:
    """Sum ``(R, W)`` operands 16 terms at a time (``W/16`` apart) while ``W`` splits and exceeds 16."""
    while ops[0].shape[1] % TERMS == 0 and ops[0].shape[1] > MAX_LANES:
        rows, width = ops[0].shape
        ops = _reduce(tuple(o.reshape(rows, TERMS, width // TERMS) for o in ops), reducer, 1)
    return ops


def _linear(plain):
    """Give a sum the JVP ``plain(tangents)`` (the same sum, as ordinary transposable jnp ops)."""
    def wrap(fn):
        fn = jax.custom_jvp(fn)
        fn.defjvp(lambda primals, tangents: (fn(*primals), plain(*tangents)))
        return fn
    return wrap


def _row_split(ops: tuple[Array, Array], reducer) -> tuple[tuple[Array, Array], Optional[tuple[Array, Array]]]:
    """``(partials, tail)``: the first ``16 * (W // 16)`` columns summed to partials, and the last ``W % 16``
    columns (``None`` if there are none) to be summed sequentially."""
    width = ops[0].shape[1]
    head = width - width % TERMS
    if head == 0:  # fewer than 16 columns: one short sequential sum
        return ops, None
    if head == width:
        return _row_partials(ops, reducer), None
    return _row_partials(tuple(o[:, :head] for o in ops), reducer), tuple(o[:, head:] for o in ops)


@_linear(lambda a, b: (jnp.sum(a, axis=-1), jnp.sum(b, axis=-1)))
def row_sums2(a: Array, b: Array) -> tuple[Array, Array]:
    """``(sum(a, -1), sum(b, -1))`` for two ``(R, W)`` arrays, in one fused pass. Returns two ``(R,)`` arrays."""
    parts, tail = _row_split((a, b), _pair)
    if parts[0].shape[1] > MAX_SEQUENTIAL:
        sums = jnp.sum(parts[0], axis=-1), jnp.sum(parts[1], axis=-1)
    else:
        sums = _reduce(parts, _pair, 1)
    return sums if tail is None else _pair(sums, _reduce(tail, _pair, 1))


@_linear(lambda a: jnp.sum(a, axis=-1))
def row_sum(a: Array) -> Array:
    """``sum(a, -1)`` of an ``(R, W)`` array, in one fused pass. Returns ``(R,)``.

    A single sum must still be variadic to stay on XLA's emitter, so it is a compensated (sum, error) pair:
    the second operand does useful work instead of being dead weight XLA would simplify away.
    """
    parts, tail = _row_split((a, jnp.zeros_like(a)), _two_sum)
    total, err = _reduce(parts, _two_sum, 1)
    if tail is not None:
        total, err = _two_sum((total, err), _reduce(tail, _two_sum, 1))
    return total + err


def _add_rows(a: Array) -> Array:
    """Sum of the rows of a short ``(r, W)`` array as a pairwise tree of row adds: one elementwise loop."""
    rows = [a[i] for i in range(a.shape[0])]
    while len(rows) > 1:
        rows = [rows[i] + rows[i + 1] if i + 1 < len(rows) else rows[i] for i in range(0, len(rows), 2)]
    return rows[0]


def _col_pair(a: Array, b: Array, block: int, reducer=_pair) -> tuple[Array, Array]:
    """Column sums of a pair, first in blocks of ``block`` rows combined with ``reducer``, then as described in
    :func:`col_sums2`."""
    rows, width = a.shape
    if rows <= block:
        return _add_rows(a), _add_rows(b)
    head = rows - rows % block
    split = (head // block, block, width)
    pa, pb = _reduce((a[:head].reshape(split), b[:head].reshape(split)), reducer, 1)
    if head < rows:  # the last rows % block rows become one more partial row
        pa = jnp.concatenate([pa, _add_rows(a[head:])[None]])
        pb = jnp.concatenate([pb, _add_rows(b[head:])[None]])
    return _col_pair(pa, pb, ROW_BLOCK)


@_linear(lambda a, b: (jnp.sum(a, axis=0), jnp.sum(b, axis=0)))
def col_sums2(a: Array, b: Array) -> tuple[Array, Array]:
    """``(sum(a, 0), sum(b, 0))`` for two ``(R, W)`` arrays, in one fused pass. Returns two ``(W,)`` arrays.

    Blocks of 8 rows are summed on the emitter, giving ``ceil(R/8)`` partial rows, then blocks of 32 until at most
    32 remain, which a pairwise tree of row adds combines (XLA:CPU's column sum of a few long rows is the slowest
    case of all: 38x a copy's time for 16 x 65536).
    """
    return _col_pair(a, b, COL_BLOCK)


@_linear(lambda a: jnp.sum(a, axis=0))
def col_sum(a: Array) -> Array:
    """``sum(a, 0)`` of an ``(R, W)`` array, in one fused pass. Returns ``(W,)``.

    Kept variadic, like :func:`row_sum`, by a compensated (sum, error) pair in the first blocks of rows (a lone
    ``jnp.sum`` would go to YNN, which writes out the norm's products first).
    """
    total, err = _col_pair(a, jnp.zeros_like(a), COL_BLOCK, _two_sum)
    return total + err


def row_sums(*arrays: Array) -> tuple[Array, ...]:
    """Row sums of one or two ``(R, W)`` arrays (:func:`row_sum`, :func:`row_sums2`), as a tuple of ``(R,)``."""
    return (row_sum(*arrays),) if len(arrays) == 1 else row_sums2(*arrays)


def col_sums(*arrays: Array) -> tuple[Array, ...]:
    """Column sums of one or two ``(R, W)`` arrays (:func:`col_sum`, :func:`col_sums2`), as a tuple of ``(W,)``."""
    return (col_sum(*arrays),) if len(arrays) == 1 else col_sums2(*arrays)
