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


class Tile:
    """One (block_rows, block_cols) tile of a (rows, width) array inside a kernel.

    ``row0``/``col0`` are the tile's first row/column (traced int32: rows and widths are < 2**31, and the Triton
    lowering forms element offsets in 64 bits when an array exceeds 2**32 bytes). On the "gpu" flavour every load
    and store is masked to the array bounds; on "tpu" the pipeline clips edge blocks and only the maths is masked.
    Per-row values are (block_rows, 1) in the maths; their refs are (block_rows, 1) on "gpu" and lane-dense
    (1, block_rows) on "tpu" (see ``_stats``).
    """

    def __init__(self, flavor: str, rows: int, width: int, row0, col0, block_rows: int, block_cols: int,
                 check_rows: bool, check_cols: bool):
        self.gpu = flavor == "gpu"
        shape = (block_rows, block_cols)
        self.row_ok = self.col_ok = None
        if check_rows:
            self.row_ok = (row0 + lax.broadcasted_iota(jnp.int32, (block_rows, 1), 0)) < rows
        if check_cols:
            self.col_ok = (col0 + lax.broadcasted_iota(jnp.int32, (1, block_cols), 1)) < width
        ok = [m for m in (self.row_ok, self.col_ok) if m is not None]
        self.valid = None
        if ok:
            self.valid = jnp.broadcast_to(ok[0], shape)
            for m in ok[1:]:
                self.valid = self.valid & jnp.broadcast_to(m, shape)

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
        """(block_rows, 1) per-row values (mean, rstd) as float32."""
        if not self.gpu:
            return _lanes_to_rows(ref[idx].astype(jnp.float32))
        return self._load(ref, idx, self.row_ok).astype(jnp.float32)

    def store_rowvec(self, ref, val, idx=...) -> None:
        if not self.gpu:
            val = _rows_to_lanes(val.astype(jnp.float32))
        self._store(ref, idx, val, self.row_ok)

    def load_colvec(self, ref, idx=...) -> jax.Array:
        """(1, block_cols) per-column values (scale, bias) as float32."""
        return self._load(ref, idx, self.col_ok).astype(jnp.float32)

    def store_colvec(self, ref, val, idx=...) -> None:
        self._store(ref, idx, val, self.col_ok)

    @staticmethod
    def first_col(val: jax.Array) -> jax.Array:
        """(block_rows, 1) column 0 of a whole-row tile (the layer-norm shift ``c = h[:, 0]``).

        A select + row sum rather than ``val[:, :1]``: value slicing does not lower on Triton, while iota/where/sum
        lower on Triton, Mosaic and in interpret mode. Only valid for tiles that start at column 0.
        """
        col = lax.broadcasted_iota(jnp.int32, val.shape, 1)
        return jnp.sum(jnp.where(col == 0, val, 0.0), axis=1, keepdims=True)

    def where(self, val: jax.Array) -> jax.Array:
        """Zero the out-of-bounds elements (a select, so NaN/inf padding cannot leak)."""
        return val if self.valid is None else jnp.where(self.valid, val, 0.0)

    def where_cols(self, val: jax.Array) -> jax.Array:
        return val if self.col_ok is None else jnp.where(self.col_ok, val, 0.0)


def _rows_to_lanes(v: jax.Array) -> jax.Array:
    """(n, 1) -> (1, n): broadcast over the lanes and transpose (a 2-D float32 transpose Mosaic lowers)."""
    return jnp.transpose(jnp.broadcast_to(v, (v.shape[0], LANES)))[:1, :]


def _lanes_to_rows(v: jax.Array) -> jax.Array:
    """(1, n) -> (n, 1)."""
    return jnp.transpose(jnp.broadcast_to(v, (LANES, v.shape[1])))[:, :1]
