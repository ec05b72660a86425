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

# GPU (Triton). Budgets measured with ptxas for sm_90 (``python -m benchmarks.compile_check --target sm_90``): a
# thread holds about 3 float32 registers per row element it owns in the forward and 8 in the backward (dy, h, xhat,
# g, dx, the dscale/dbias accumulators), and the register file caps a thread at 65536 / threads (255 at most). So
# the forward keeps <= 32 elements per thread (1024 threads at most: rows up to 32768 on chip) and the backward
# <= 16 at <= 8 warps (255 registers: tiles up to 4096 elements on chip, chunked beyond). At 16 warps (128
# registers) a backward with 16 elements per thread already spills a few bytes (float16 add_layer_norm).
# Whole row on chip up to this padded width (forward), keyed by the input itemsize.
GPU_MAX_ROW_WIDTH = {4: 32768, 2: 32768}
# Chunk width for rows wider than that.
GPU_CHUNK_WIDTH = {4: 16384, 2: 16384}
# Backward: whole row on chip up to this padded width, chunks of GPU_BWD_CHUNK_WIDTH beyond.
GPU_BWD_MAX_ROW_WIDTH = {4: 4096, 2: 4096}
GPU_BWD_CHUNK_WIDTH = {4: 4096, 2: 4096}
# Elements of one (block_rows, block_cols) tile that a program aims for when rows are narrow.
GPU_TILE_ELEMENTS = {4: 4096, 2: 8192}
# ... and in the backward (a 32 x 128 float32 add_rms_norm tile at 8 warps spilled 8 bytes; 16 x 128 at 4 does not).
GPU_BWD_TILE_ELEMENTS = 2048
GPU_MAX_BLOCK_ROWS = 256
# (max tile elements, num_warps): first row whose bound covers the tile. Forward: <= 32 elements per thread;
# backward: <= 16.
GPU_WARPS = ((1024, 2), (4096, 4), (8192, 8), (16384, 16), (32768, 32))
GPU_BWD_WARPS = ((1024, 2), (2048, 4), (4096, 8))
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
    bwd: "Plan | None" = None  # the backward's own tiling where it differs (GPU: fewer elements per thread)

    @property
    def backward(self) -> "Plan":
        return self.bwd if self.bwd is not None else self

    @property
    def chunked(self) -> bool:
        return self.n_chunks > 1


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _warps(tile_elements: int, table=GPU_WARPS) -> int:
    return next(w for bound, w in table if tile_elements <= bound)


def _gpu_tiling(rows: int, width: int, max_row: int, chunk: int, tile: int) -> tuple[int, int, int]:
    """(block_rows, block_cols, n_chunks): the whole padded row when it fits ``max_row`` (several rows up to
    ``tile`` elements), else ``chunk`` columns of one row."""
    padded = _pow2(width)
    if padded > max_row:
        return 1, chunk, -(-width // chunk)
    return max(1, min(tile // padded, GPU_MAX_BLOCK_ROWS, _pow2(rows))), padded, 1


def gpu_plan(rows: int, width: int, itemsize: int) -> Plan:
    itemsize = 4 if itemsize >= 4 else 2
    br, bc, nc = _gpu_tiling(rows, width, GPU_MAX_ROW_WIDTH[itemsize], GPU_CHUNK_WIDTH[itemsize],
                             GPU_TILE_ELEMENTS[itemsize])
    bbr, bbc, bnc = _gpu_tiling(rows, width, GPU_BWD_MAX_ROW_WIDTH[itemsize], GPU_BWD_CHUNK_WIDTH[itemsize],
                                GPU_BWD_TILE_ELEMENTS)
    bwd = Plan("gpu", bbr, bbc, bnc, _warps(bbr * bbc, GPU_BWD_WARPS),
               _gpu_bwd_sub_blocks(rows, bbr, bnc, itemsize))
    fwd = Plan("gpu", br, bc, nc, _warps(br * bc), _gpu_bwd_sub_blocks(rows, br, nc, itemsize))
    return fwd if bwd == fwd else dataclasses.replace(fwd, bwd=bwd)


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
