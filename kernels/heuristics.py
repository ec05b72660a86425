"""Block-size / warp heuristics for the norm kernels, kept out of the kernel bodies.

A :class:`Plan` fixes the tiling of a ``(rows, width)`` problem:

* ``flavor == "gpu"`` (Triton, and the CPU interpret mode that checks it): power-of-two blocks; the block may
  overhang the array, so every load/store is masked explicitly.
* ``flavor == "tpu"`` (Mosaic, and TPU interpret mode): blocks are multiples of (8, 128) or the full dim; edge
  blocks are read padded with unspecified values (masked in the maths) and written clipped by the pipeline.

``chunked`` plans split a row into ``n_chunks`` column blocks of ``block_cols`` and run multi-pass kernels; otherwise
the whole (padded) row is one block and ``block_rows`` rows share a program.
The tables are first guesses (no GPU/TPU has tuned them yet); edit the tables, not the kernels.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# GPU (Triton). Whole row on chip up to this padded width, keyed by the input itemsize.
GPU_MAX_ROW_WIDTH = {4: 32768, 2: 65536}
# Chunk width for rows wider than that.
GPU_CHUNK_WIDTH = {4: 16384, 2: 16384}
# Elements of one (block_rows, block_cols) tile that a program aims for when rows are narrow.
GPU_TILE_ELEMENTS = {4: 4096, 2: 8192}
GPU_MAX_BLOCK_ROWS = 256
# (max tile elements, num_warps): first row whose bound covers the tile.
GPU_WARPS = ((1024, 2), (4096, 4), (8192, 8), (16384, 16), (1 << 62, 32))
# Backward: aim for this many programs in all (~4 per H100 SM) ...
GPU_BWD_PROGRAMS = 528
# ... but few enough that the float32 dscale + dbias partials (16 bytes per column per program, written then read)
# stay under this fraction of the backward's own traffic (3 * rows * width * itemsize).
GPU_BWD_PARTIAL_FRACTION = 0.1
GPU_MAX_BWD_SUB_BLOCKS = 1024

# TPU (Mosaic): bytes of one f32 tile in VMEM (several tiles are double-buffered; default scoped VMEM 16-32 MiB).
TPU_TILE_BYTES = 1 << 20
TPU_CHUNK_WIDTH = 16384
TPU_MAX_BLOCK_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class Plan:
    flavor: str          # "gpu" | "tpu": see module docstring
    block_rows: int      # rows per tile
    block_cols: int      # padded row (whole-row path) or chunk width (chunked path)
    n_chunks: int        # column blocks per row; 1 for the whole-row path
    num_warps: int | None
    bwd_sub_blocks: int  # row tiles looped over by one backward program (fewer dscale/dbias partials)

    @property
    def chunked(self) -> bool:
        return self.n_chunks > 1


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _warps(tile_elements: int) -> int:
    return next(w for bound, w in GPU_WARPS if tile_elements <= bound)


def gpu_plan(rows: int, width: int, itemsize: int) -> Plan:
    itemsize = 4 if itemsize >= 4 else 2
    padded = _pow2(width)
    if padded <= GPU_MAX_ROW_WIDTH[itemsize]:
        cols, n_chunks = padded, 1
    else:
        cols = GPU_CHUNK_WIDTH[itemsize]
        n_chunks = -(-width // cols)
    block_rows = 1
    if n_chunks == 1:
        block_rows = max(1, min(GPU_TILE_ELEMENTS[itemsize] // cols, GPU_MAX_BLOCK_ROWS, _pow2(rows)))
    sub = _gpu_bwd_sub_blocks(rows, block_rows, n_chunks, itemsize)
    return Plan("gpu", block_rows, cols, n_chunks, _warps(block_rows * cols), sub)


def _gpu_bwd_sub_blocks(rows: int, block_rows: int, n_chunks: int, itemsize: int) -> int:
    """Row tiles per backward program (a power of two, so rows per program stay one)."""
    row_tiles = -(-rows // block_rows)
    cap = int(GPU_BWD_PARTIAL_FRACTION * 3 * rows * itemsize / 16)
    n_prog = max(1, min(GPU_BWD_PROGRAMS // n_chunks, cap, row_tiles))
    return min(_pow2(-(-row_tiles // n_prog)), GPU_MAX_BWD_SUB_BLOCKS)


def tpu_plan(rows: int, width: int, itemsize: int) -> Plan:
    del itemsize  # tiles are sized for their float32 working copies
    lanes = -(-width // 128) * 128
    if 8 * lanes * 4 <= TPU_TILE_BYTES:
        cols, n_chunks = width, 1  # full-dim block: no (8, 128) constraint on the width
        block_rows = max(8, min(TPU_MAX_BLOCK_ROWS, TPU_TILE_BYTES // (lanes * 4)) // 8 * 8)
    else:
        cols, n_chunks = TPU_CHUNK_WIDTH, -(-width // TPU_CHUNK_WIDTH)
        block_rows = 8
    if rows <= block_rows:
        block_rows = rows  # full-dim block
    return Plan("tpu", block_rows, cols, n_chunks, None, 1)


def make_plan(rows: int, width: int, dtype, flavor: str) -> Plan:
    itemsize = np.dtype(dtype).itemsize
    return gpu_plan(rows, width, itemsize) if flavor == "gpu" else tpu_plan(rows, width, itemsize)
