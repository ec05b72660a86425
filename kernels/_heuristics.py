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
# (max tile elements, num_warps): first row whose bound covers the tile. Forward: <= 32 elements per thread, and
# <= 16 up to 4096 (a 4 x 1024 float32 add_layer_norm tile at 4 warps spilled 4 bytes; 8 warps: none); backward: <= 16.
GPU_WARPS = ((1024, 2), (2048, 4), (8192, 8), (16384, 16), (32768, 32))
GPU_BWD_WARPS = ((1024, 2), (2048, 4), (4096, 8))
# Backward: aim for this many programs in all (~4 per H100 SM) ...
GPU_BWD_PROGRAMS = 528
# ... but few enough that the float32 dscale + dbias partials (16 bytes per column per program, written then read)
# stay under this fraction of the backward's own traffic (3 * rows * width * itemsize). TPU too.
BWD_PARTIAL_FRACTION = GPU_BWD_PARTIAL_FRACTION = 0.1
GPU_MAX_BWD_SUB_BLOCKS = 1024

# TPU (Mosaic). Scoped VMEM a kernel gets by default, per generation (``pltpu.get_tpu_info().chip_version``); an
# unknown chip (interpret mode, a newer generation) is planned as the smallest.
TPU_SCOPED_VMEM = {"v5e": 16 << 20, "v5p": 16 << 20, "v6e": 32 << 20}
TPU_DEFAULT_GENERATION = "v5e"
# Bytes of one float32 tile = scoped VMEM / this: the kernels hold ~12 tile-sized buffers (double-buffered inputs
# and outputs, float32 temporaries); 1 MiB tiles peaked at 12.1 of v5e's 16 MiB (76 %, compile check).
TPU_TILE_DIVISOR = 16
# ... times this for a float32 backward (v5p's Mosaic gave the float32 add_layer_norm backward at 8 x 32768 83 % of
# 16 MiB, v5e 76 %; 16-bit inputs halve the pipelined buffers: 51 %).
TPU_BWD_F32_TILE_SCALE = {"v5p": 0.75}
TPU_MAX_BLOCK_ROWS = 1024
# Row tiles of >= 128 rows are a multiple of 128, so the lane-dense statistics ((1, rows) in HBM) take whole
# (1, block_rows) blocks; narrower tiles (wide rows) store theirs as (tiles, 1, block_rows).
TPU_STAT_LANES = 128
# Backward: parallel slices of the row tiles (one dscale/dbias partial each; 2 feeds v5p's megacore), the tiles of a
# slice accumulated in an "arbitrary" grid dimension.
TPU_BWD_PARALLEL = 2
# Transposed plans (the kernels take x.T: a row down the sublanes, rows along the lanes; chosen when XLA's default
# layout of x is column-major, see _backend.tpu_column_major). A row tile gets the same float32 tile budget. Its
# per-column values -- scale, bias, the dscale/dbias accumulators -- are (width, 1) columns, padded to 128 lanes in
# VMEM (each as large as a 128-row tile; the partials are stored lane-dense in HBM): at the worst shapes, 128 x 2040
# tiles of 1 MiB (v5e, v5p) and 128 x 4080 of 2 MiB (v6e), float32 add_layer_norm peaked at 76 % of the scoped limit
# (v5p forward; compile check).
# Row tiles along the lanes: a multiple of 128 (whole lane-dense statistics blocks) up to this many rows (narrow
# widths: a (8, 16384) float32 tile is 512 KiB), else all rows.
TPU_T_MAX_BLOCK_ROWS = 16384
# When the transposed plan pays (compile check, v5e, cost analysis of the whole op against the row-major kernels plus
# XLA's layout copies): whole-row transposed plans from this many rows (at 128-512 rows the (width, 1) parameter
# columns, padded to 128 lanes, cost more than the copies: up to 1.6x the bytes); chunked (multi-pass) transposed
# plans only for arrays of at least this many bytes (smaller ones fit VMEM, where XLA stages the copies cheaply and
# prefetches the multi-pass operand: 1.1-1.25x the bytes of the single-pass row-major kernel with copies at 12-82 MB;
# 0.4-0.6x at 164 MB and up).
TPU_T_MIN_ROWS = 1024
TPU_T_CHUNKED_MIN_BYTES = 128 << 20


@dataclasses.dataclass(frozen=True)
class Plan:
    flavor: str          # "gpu" | "tpu": see module docstring
    block_rows: int      # rows per tile
    block_cols: int      # padded row (whole-row path) or chunk width (chunked path)
    n_chunks: int        # column blocks per row; 1 for the whole-row path
    num_warps: int | None
    bwd_sub_blocks: int  # row tiles summed into one dscale/dbias partial (GPU: a loop in one program; TPU: the
                         # "arbitrary" grid dimension)
    bwd: "Plan | None" = None  # the backward's own tiling where it differs (GPU: fewer elements per thread)
    transposed: bool = False  # TPU: the kernels take x.T (a row down the sublanes), for column-major operands

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


def tpu_tile_bytes(generation: str | None) -> int:
    """Bytes of one float32 tile for a TPU generation (None or unknown: :data:`TPU_DEFAULT_GENERATION`)."""
    vmem = TPU_SCOPED_VMEM.get(generation or "", TPU_SCOPED_VMEM[TPU_DEFAULT_GENERATION])
    return vmem // TPU_TILE_DIVISOR


def tpu_plan(rows: int, width: int, itemsize: int, generation: str | None = None, transposed: bool = False) -> Plan:
    """``transposed``: plan for the kernels taking x.T (width, rows) (see :class:`Plan`)."""
    tile = tpu_tile_bytes(generation)
    tiling = _tpu_tiling_t if transposed else _tpu_tiling
    fwd = tiling(rows, width, itemsize, tile)
    if itemsize < 4 or generation not in TPU_BWD_F32_TILE_SCALE:
        return fwd
    bwd = tiling(rows, width, itemsize, int(tile * TPU_BWD_F32_TILE_SCALE[generation]))
    return fwd if bwd == fwd else dataclasses.replace(fwd, bwd=bwd)


def tpu_transposed_pays(rows: int, width: int, itemsize: int, generation: str | None = None) -> bool:
    """Whether the transposed kernels beat the row-major ones plus XLA's layout copies, for an operand whose
    default layout is column-major (see :data:`TPU_T_MIN_ROWS`)."""
    plan = tpu_plan(rows, width, itemsize, generation, transposed=True)
    if plan.chunked or plan.backward.chunked:
        return rows * width * itemsize >= TPU_T_CHUNKED_MIN_BYTES
    return rows >= TPU_T_MIN_ROWS


def _tpu_tiling_t(rows: int, width: int, itemsize: int, tile: int) -> Plan:
    """Transposed: whole rows (width sublanes) when 128 of them fit ``tile`` bytes as float32, else chunks of
    the width by 128-row tiles."""
    sublanes = -(-width // 8) * 8
    lanes = tile // (sublanes * 4)
    if lanes >= 128:
        cols, n_chunks = width, 1  # full-dim block
        block_rows = min(TPU_T_MAX_BLOCK_ROWS, lanes // 128 * 128)
    else:
        cols = tile // (128 * 4 * 2) // 8 * 8  # 128 rows of half a tile (1024 sublanes of a 1 MiB tile)
        n_chunks, block_rows = -(-width // cols), 128
    if rows <= block_rows:
        block_rows = rows  # full-dim block
    return Plan("tpu", block_rows, cols, n_chunks, None, _tpu_bwd_sub_blocks(rows, block_rows, itemsize),
                transposed=True)


def _tpu_tiling(rows: int, width: int, itemsize: int, tile: int) -> Plan:
    """Whole rows when 8 of them fit ``tile`` bytes as float32 (the kernels' working copies), else chunks."""
    lanes = -(-width // 128) * 128
    if 8 * lanes * 4 <= tile:
        cols, n_chunks = width, 1  # full-dim block: no (8, 128) constraint on the width
        block_rows = min(TPU_MAX_BLOCK_ROWS, tile // (lanes * 4))
        step = TPU_STAT_LANES if block_rows >= TPU_STAT_LANES else 8
        block_rows = max(8, block_rows // step * step)
    else:
        cols = tile // (8 * 4 * 2) // 128 * 128  # 8 rows of half a tile (16384 columns of a 1 MiB tile)
        n_chunks, block_rows = -(-width // cols), 8
    if rows <= block_rows:
        block_rows = rows  # full-dim block
    return Plan("tpu", block_rows, cols, n_chunks, None, _tpu_bwd_sub_blocks(rows, block_rows, itemsize))


def _tpu_bwd_sub_blocks(rows: int, block_rows: int, itemsize: int) -> int:
    """Row tiles per backward partial: :data:`TPU_BWD_PARALLEL` slices, fewer when the partials would exceed
    :data:`BWD_PARTIAL_FRACTION` of the backward's traffic."""
    row_tiles = -(-rows // block_rows)
    cap = int(BWD_PARTIAL_FRACTION * 3 * rows * itemsize / 16)
    return -(-row_tiles // max(1, min(TPU_BWD_PARALLEL, cap, row_tiles)))


def make_plan(rows: int, width: int, dtype, flavor: str, generation: str | None = None,
              transposed: bool = False) -> Plan:
    """``generation``: the TPU chip ("v5e", "v6e", "v5p"; None: unknown) for the "tpu" flavour; ``transposed``:
    a plan for the kernels taking x.T (TPU only)."""
    itemsize = np.dtype(dtype).itemsize
    if flavor == "gpu":
        return gpu_plan(rows, width, itemsize)
    return tpu_plan(rows, width, itemsize, generation, transposed)
