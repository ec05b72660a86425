"""Per-row float32 values between kernels and XLA (mean, rstd, the layer-norm shift, chunk partials).

GPU flavour: ``(rows, 1)`` columns, as the Triton kernels compute them.
TPU flavour: lane-dense, rows along the 128 lanes, so a value costs 4 bytes a row in HBM and VMEM instead of the
512 of a ``(rows, 1)`` array padded to (8, 128) tiles. In HBM that is ``(1, rows)`` in ``(1, block_rows)`` blocks
(``block_rows`` a multiple of 128 or all rows: a free reshape to ``(rows,)``), or for row tiles under 128 rows
(wide rows, where a value is < 1 % of the row's traffic) ``(tiles, 1, block_rows)``. The kernels move between the
``(block_rows, 1)`` column their maths uses and the ``(1, block_rows)`` lane vector with one transpose
(``Tile.load_rowvec`` / ``Tile.store_rowvec``).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from ._backend import LANES, SQUEEZED

F32 = jnp.float32


class RowValues:
    """The HBM form of per-row float32 values for one tiling of ``rows`` into ``block_rows``-row tiles.

    ``lead``: leading dims in front of the rows (e.g. ``(n_chunks,)`` for per-chunk partials), squeezed out of the
    kernel's block. Inside a kernel a block is ``(block_rows, 1)`` (GPU) or ``(1, block_rows)`` (TPU).
    """

    def __init__(self, flavor: str, rows: int, block_rows: int, lead: tuple[int, ...] = ()):
        self.lanes = flavor == "tpu"
        self.rows, self.block_rows, self.lead = rows, block_rows, tuple(lead)
        self.n_tiles = -(-rows // block_rows)
        self.flat = block_rows % LANES == 0 or block_rows == rows  # (1, rows) in whole lane blocks

    @property
    def shape(self) -> tuple[int, ...]:
        if not self.lanes:
            return self.lead + (self.rows, 1)
        return self.lead + ((1, self.rows) if self.flat else (self.n_tiles, 1, self.block_rows))

    def struct(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.shape, F32)

    def spec(self, tile: Callable, lead: Callable | None = None) -> pl.BlockSpec:
        """BlockSpec of one row tile; ``tile(*grid_ids)`` is its row-tile index, ``lead(*grid_ids)`` the tuple of
        leading indices (``lead`` dims only)."""
        sq = (SQUEEZED,) * len(self.lead)

        def at(*ids):
            pre = tuple(lead(*ids)) if lead is not None else ()
            i = tile(*ids)
            if not self.lanes:
                return pre + (i, 0)
            return pre + ((0, i) if self.flat else (i, 0, 0))

        if not self.lanes:
            return pl.BlockSpec(sq + (self.block_rows, 1), at)
        return pl.BlockSpec(sq + ((1, self.block_rows) if self.flat else (SQUEEZED, 1, self.block_rows)), at)

    def pack(self, v: jax.Array) -> jax.Array:
        """``lead + (rows,)`` float32 -> the HBM form (a reshape, plus a small pad for sub-128-row tiles)."""
        v = v.astype(F32)
        if self.lanes and not self.flat:
            pad = self.n_tiles * self.block_rows - self.rows
            if pad:
                v = jnp.pad(v, [(0, 0)] * len(self.lead) + [(0, pad)])
        return v.reshape(self.shape)

    def unpack(self, a: jax.Array) -> jax.Array:
        """The HBM form -> ``lead + (rows,)``."""
        flat = a.reshape(self.lead + (-1,))
        return flat if flat.shape[-1] == self.rows else flat[..., :self.rows]
