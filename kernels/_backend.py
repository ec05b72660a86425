"""Platform selection and the masked tile I/O shared by every norm kernel.

Platforms (the ``platform`` argument of :func:`rnlib.kernels.norm_fwd` and friends):

* ``"gpu"`` (aliases ``"cuda"``, ``"rocm"``): Pallas' Triton backend, selected explicitly through the Triton
  compiler params. What each jax version does with it:

  - jax 0.10.x: a plain ``pallas_call`` on CUDA lowers with Mosaic GPU; the Triton compiler params select Triton.
    Without a GPU, Triton lowering assumes compute capability 9.0.
  - jax >= 0.11: a plain ``pallas_call`` on CUDA lowers with Triton again (``pallas_call`` no longer lowers to
    Mosaic GPU); the Pallas Triton backend is deprecated (a DeprecationWarning on every lowering, filtered below
    for rnlib's kernels only, by its message); without a GPU, lowering needs an abstract GPU device:
    :func:`cuda_lowering` provides one.
* ``"tpu"``: Mosaic TPU.
* ``"cpu"``: the GPU kernels (power-of-two blocks, masked loads/stores) in Pallas interpret mode
  (``interpret=True``); the interpreter pads out-of-bounds block elements with NaN, so missing masks show up.
* ``"tpu_interpret"``: the TPU kernels under TPU interpret semantics (``pltpu.InterpretParams()``), on CPU.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

try:  # jax >= 0.4.36 spelling; older releases called it TritonCompilerParams
    from jax.experimental.pallas import triton as _pl_triton
except ImportError:  # pragma: no cover - Triton support missing from this jax build
    _pl_triton = None
try:
    from jax.experimental.pallas import tpu as _pl_tpu
except ImportError:  # pragma: no cover
    _pl_tpu = None

# jax >= 0.11 warns on every Triton lowering. rnlib keeps Triton on purpose (Mosaic GPU needs sm_90a-only features
# and its own kernels); the lowering happens inside jit, outside any rnlib frame, hence a message-scoped filter.
warnings.filterwarnings("ignore", message=r"The Pallas Triton backend is deprecated", category=DeprecationWarning)

from rnlib import _platforms

PLATFORMS = _platforms.PLATFORMS + ("tpu_interpret",)
SQUEEZED = getattr(pl, "squeezed", None)  # block dim dropped from the kernel's view (None on old jax)
LANES = 128  # TPU vector lanes


def canonical_platform(platform: str) -> str:
    """One of :data:`PLATFORMS` (the device platforms, plus the kernels' own "tpu_interpret" test mode)."""
    return _platforms.canonical(platform, extra=("tpu_interpret",))


def flavor(platform: str) -> str:
    """Kernel flavour: "gpu" (masked power-of-two tiles) or "tpu" ((8, 128) tiles, clipped edge blocks)."""
    return "tpu" if canonical_platform(platform) in ("tpu", "tpu_interpret") else "gpu"


def _triton_params(num_warps: int | None) -> Any:
    cls = getattr(_pl_triton, "CompilerParams", None) or getattr(pl, "TritonCompilerParams", None)
    if cls is None:  # pragma: no cover
        raise RuntimeError("this jax has no Pallas Triton backend (jax.experimental.pallas.triton.CompilerParams)")
    return cls(num_warps=num_warps, num_stages=1)


def tpu_generation() -> str | None:
    """The TPU chip being traced for ("v5e", "v6e", "v5p", ...; None when unknown, e.g. on CPU).

    ``pltpu.get_tpu_info()`` reads jax's default device (the TPU itself on a TPU host), or the device of an abstract
    mesh; an ahead-of-time compile on a CPU host names its target with ``jax.default_device(topology_device)``
    (as ``benchmarks.compile_check`` does).
    """
    get = getattr(_pl_tpu, "get_tpu_info", None)
    if get is None:  # pragma: no cover - jax < 0.6
        return None
    try:
        return str(get().chip_version)
    except Exception:  # noqa: BLE001 - not a TPU (CPU, GPU, unknown kind)
        return None


def tpu_column_major(rows: int, width: int, dtype) -> bool:
    """Whether XLA's default TPU layout of a (rows, width) ``dtype`` array is column-major (``{0,1}``).

    XLA gives a jit's parameters and results the layout that pads less to (8, 128) tiles (ties: row-major):
    float32 (4096, 1000) is column-major (1000 rows of 4096 lanes pad nothing; row-major pads 1000 to 1024 lanes),
    (4097, 1000), (4096, 761) and widths that are multiples of 128 are row-major. A kernel that insists on
    row-major operands then costs a layout copy of each (rows, width) operand and result at the boundary, so the
    kernels take ``x.T`` (a bitcast) instead. Asked of the PJRT client of the device being traced for (jax's
    default device: the TPU itself, or the topology device of an ahead-of-time compile), the same question jit
    asks; False when there is none (CPU, "tpu_interpret") or it cannot say.
    """
    try:
        dev = jax.config.jax_default_device
        if dev is None or isinstance(dev, str):
            dev = jax.devices(dev)[0]
        if dev.platform != "tpu":
            return False
        layout = dev.client.get_default_layout(np.dtype(dtype), (int(rows), int(width)), dev)
        return tuple(layout._xla_layout().minor_to_major()) == (0, 1)  # no public accessor in jax 0.10
    except Exception:  # noqa: BLE001 - no TPU client, or a jax without this query: keep row-major
        return False


def _tpu_params(dims: int | tuple[str, ...]) -> Any:
    cls = getattr(_pl_tpu, "CompilerParams", None) or getattr(_pl_tpu, "TPUCompilerParams", None)
    if cls is None:  # pragma: no cover
        raise RuntimeError("this jax has no Pallas TPU backend")
    return cls(dimension_semantics=("parallel",) * dims if isinstance(dims, int) else tuple(dims))


def _tpu_interpret() -> Any:
    cls = getattr(_pl_tpu, "InterpretParams", None)
    if cls is None:  # pragma: no cover - very old jax: plain interpret mode
        return True
    return cls()


def call_kwargs(platform: str, num_warps: int | None, dims: int | tuple[str, ...]) -> dict:
    """Keyword arguments (interpret / compiler_params) for ``pl.pallas_call`` on ``platform``.

    ``dims``: the number of grid dimensions (all "parallel"), or the TPU dimension semantics of each.
    """
    p = canonical_platform(platform)
    if p == "gpu":
        return dict(compiler_params=_triton_params(num_warps))
    if p == "tpu":
        return dict(compiler_params=_tpu_params(dims))
    if p == "tpu_interpret":
        return dict(interpret=_tpu_interpret(), compiler_params=_tpu_params(dims))
    return dict(interpret=True)


@contextlib.contextmanager
def cuda_lowering(device_kind: str = "NVIDIA H100") -> Iterator[None]:
    """Lower the Triton kernels for ``device_kind`` on a host without a GPU (``jax.export`` / ``.lower``).

    jax >= 0.11 reads the compute capability from an abstract GPU device set with ``use_abstract_mesh``; earlier
    versions assume sm_90 when no GPU is present and have nothing to set (a no-op there).
    """
    sharding = jax.sharding
    if not hasattr(sharding, "AbstractDevice") or not hasattr(sharding, "use_abstract_mesh"):
        yield
        return
    dev = sharding.AbstractDevice(device_kind=device_kind, num_cores=None, platform="gpu")
    mesh = sharding.AbstractMesh((1,), ("_rn",), (sharding.AxisType.Explicit,), abstract_device=dev)
    with sharding.use_abstract_mesh(mesh):
        yield


def pallas_call(kernel, *, flops: int, transcendentals: int = 0, **kwargs):
    """``pl.pallas_call`` with a ``pl.CostEstimate``: ``flops`` as given, bytes = every operand and result once.

    Without it XLA's scheduler and ``cost_analysis()`` see a kernel as 0 flops and 0 bytes.
    """
    out_shape = kwargs["out_shape"]
    outs = jax.tree_util.tree_leaves(out_shape)

    def call(*args):
        nbytes = sum(int(a.size) * jnp.dtype(a.dtype).itemsize for a in (*args, *outs))
        ce = pl.CostEstimate(flops=int(flops), transcendentals=int(transcendentals), bytes_accessed=nbytes)
        return pl.pallas_call(kernel, cost_estimate=ce, **kwargs)(*args)

    return call


class Orient:
    """How the kernels see a (rows, width) problem: row-major (a row along the lanes), or ``transposed`` (TPU):
    the kernels get ``x.T`` (width, rows) -- a free bitcast when XLA keeps x column-major, its default TPU layout
    for shapes that pad less that way (:func:`tpu_column_major`) -- a row down the sublanes, rows along the lanes.

    Callers give block indices in the logical (row tile, column block) order; this swaps them when transposed.
    """

    def __init__(self, transposed: bool):
        self.t = bool(transposed)

    def arr(self, a: jax.Array | None) -> jax.Array | None:
        """A (rows, width) array as the kernels take it (and back: the same swap)."""
        return a.T if self.t and a is not None else a

    def shape(self, rows: int, width: int) -> tuple[int, int]:
        return (width, rows) if self.t else (rows, width)

    def tile(self, block_rows: int, block_cols: int, at) -> pl.BlockSpec:
        """``at(*grid_ids) -> (row tile, column block)``."""
        if not self.t:
            return pl.BlockSpec((block_rows, block_cols), at)
        return pl.BlockSpec((block_cols, block_rows), lambda *ids: tuple(at(*ids))[::-1])

    def param(self, p: jax.Array, width: int) -> jax.Array:
        """A (width,) parameter as float32 (1, width), or a (width, 1) column transposed."""
        return p.astype(jnp.float32).reshape((width, 1) if self.t else (1, width))

    def param_spec(self, block_cols: int, col) -> pl.BlockSpec:
        """``col(*grid_ids) -> column block``."""
        if self.t:
            return pl.BlockSpec((block_cols, 1), lambda *ids: (col(*ids), 0))
        return pl.BlockSpec((1, block_cols), lambda *ids: (0, col(*ids)))

    def col_zeros(self, block_cols: int) -> jax.Array:
        return jnp.zeros((block_cols, 1) if self.t else (1, block_cols), jnp.float32)


class Tile:
    """One (block_rows, block_cols) tile of a (rows, width) array inside a kernel.

    ``row0``/``col0`` are the tile's first row/column (traced int32: rows and widths are < 2**31, and the Triton
    lowering forms element offsets in 64 bits when an array exceeds 2**32 bytes). On the "gpu" flavour every load
    and store is masked to the array bounds; on "tpu" the pipeline clips edge blocks and only the maths is masked.
    Per-row values are (block_rows, 1) in the maths; their refs are (block_rows, 1) on "gpu" and lane-dense
    (1, block_rows) on "tpu" (see ``_stats``).

    ``transposed`` (TPU only, see :class:`Orient`): the kernel sees ``x.T``, tiles are (block_cols, block_rows),
    rows along the lanes; a row's values are reduced over axis 0 (sublanes), per-row values are (1, block_rows)
    -- already lane-dense, no transpose -- and per-column values (scale, bias, dscale/dbias sums) (block_cols, 1).
    The kernel bodies reduce with :meth:`row_sum` / :meth:`col_sum` and never name an axis.
    """

    def __init__(self, flavor: str, rows: int, width: int, row0, col0, block_rows: int, block_cols: int,
                 check_rows: bool, check_cols: bool, transposed: bool = False):
        self.gpu = flavor == "gpu"
        self.t = transposed
        self.red = 0 if transposed else 1  # the axis a row's elements lie along
        shape = (block_cols, block_rows) if transposed else (block_rows, block_cols)
        self.row_ok = self.col_ok = None
        if check_rows:
            along = 1 - self.red  # the axis that indexes rows
            self.row_ok = (row0 + lax.broadcasted_iota(jnp.int32, _vec(block_rows, along), along)) < rows
        if check_cols:
            self.col_ok = (col0 + lax.broadcasted_iota(jnp.int32, _vec(block_cols, self.red), self.red)) < width
        ok = [m for m in (self.row_ok, self.col_ok) if m is not None]
        self.valid = None
        if ok:
            self.valid = jnp.broadcast_to(ok[0], shape)
            for m in ok[1:]:
                self.valid = self.valid & jnp.broadcast_to(m, shape)

    def row_sum(self, val: jax.Array) -> jax.Array:
        """Sum over each row's elements: a per-row value ((block_rows, 1), or (1, block_rows) transposed)."""
        return jnp.sum(val, axis=self.red, keepdims=True)

    def col_sum(self, val: jax.Array) -> jax.Array:
        """Sum over the tile's rows: a per-column value ((1, block_cols), or (block_cols, 1) transposed)."""
        return jnp.sum(val, axis=1 - self.red, keepdims=True)

    def _load(self, ref, idx, mask):
        if self.gpu and mask is not None:
            from jax.experimental.pallas import triton as plgpu
            return plgpu.load(ref.at[idx], mask=mask, other=0)
        return ref[idx]

    def _store(self, ref, idx, val, mask):
        val = val.astype(ref.dtype)
        if self.gpu and mask is not None:
            from jax.experimental.pallas import triton as plgpu
            plgpu.store(ref.at[idx], val, mask=mask)
        else:
            ref[idx] = val

    def load(self, ref, idx=...) -> jax.Array:
        """(block_rows, block_cols) tile as float32."""
        return self._load(ref, idx, self.valid).astype(jnp.float32)

    def load_raw(self, ref, idx=...) -> jax.Array:
        return self._load(ref, idx, self.valid)

    def store(self, ref, val, idx=...) -> None:
        self._store(ref, idx, val, self.valid)

    def load_rowvec(self, ref, idx=...) -> jax.Array:
        """(block_rows, 1) per-row values (mean, rstd) as float32 ((1, block_rows) transposed, as stored)."""
        if self.t:
            return ref[idx].astype(jnp.float32)
        if not self.gpu:
            return _lanes_to_rows(ref[idx].astype(jnp.float32))
        return self._load(ref, idx, self.row_ok).astype(jnp.float32)

    def store_rowvec(self, ref, val, idx=...) -> None:
        if not self.gpu and not self.t:
            val = _rows_to_lanes(val.astype(jnp.float32))
        self._store(ref, idx, val, self.row_ok)

    def load_colvec(self, ref, idx=...) -> jax.Array:
        """(1, block_cols) per-column values (scale, bias) as float32 ((block_cols, 1) transposed)."""
        return self._load(ref, idx, self.col_ok).astype(jnp.float32)

    def store_colvec(self, ref, val, idx=...) -> None:
        self._store(ref, idx, val, self.col_ok)

    def col_lanes(self, val: jax.Array) -> jax.Array:
        """A per-column value as the (1, block_cols) lane vector it is stored as: transposed tiles turn their
        (block_cols, 1) column with one in-kernel transpose, so that the dscale/dbias partials cost 4 bytes a column
        in HBM rather than 512 (a (width, 1) array padded to 128 lanes)."""
        return _rows_to_lanes(val) if self.t else val

    def first_col(self, val: jax.Array) -> jax.Array:
        """Per-row column 0 of a whole-row tile (the layer-norm shift ``c = h[:, 0]``).

        A select + row sum rather than ``val[:, :1]``: value slicing does not lower on Triton, while iota/where/sum
        lower on Triton, Mosaic and in interpret mode. Only valid for tiles that start at column 0.
        """
        col = lax.broadcasted_iota(jnp.int32, val.shape, self.red)
        return self.row_sum(jnp.where(col == 0, val, 0.0))

    def where(self, val: jax.Array) -> jax.Array:
        """Zero the out-of-bounds elements (a select, so NaN/inf padding cannot leak)."""
        return val if self.valid is None else jnp.where(self.valid, val, 0.0)

    def where_cols(self, val: jax.Array) -> jax.Array:
        return val if self.col_ok is None else jnp.where(self.col_ok, val, 0.0)


def _vec(n: int, axis: int) -> tuple[int, int]:
    """Shape of an n-vector along ``axis`` of a 2-D tile."""
    return (n, 1) if axis == 0 else (1, n)


def _rows_to_lanes(v: jax.Array) -> jax.Array:
    """(n, 1) -> (1, n): broadcast over the lanes and transpose (a 2-D float32 transpose Mosaic lowers)."""
    return jnp.transpose(jnp.broadcast_to(v, (v.shape[0], LANES)))[:1, :]


def _lanes_to_rows(v: jax.Array) -> jax.Array:
    """(1, n) -> (n, 1)."""
    return jnp.transpose(jnp.broadcast_to(v, (LANES, v.shape[1])))[:, :1]
