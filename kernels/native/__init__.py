"""Native (C++) layer/RMS norm for XLA:CPU, installed as ``rnlib.kernels.native``.

The forward and backward of rnlib's plain norm maths (``norm_fwd``/``norm_bwd`` on the 2-D ``(rows, width)``
form, float32 statistics, the shifted saved ``mean``), computed by the XLA FFI handlers in ``norm_cpu.cc``: one
memory pass per row, rows split over XLA's intra-op thread pool, deterministic sums. ``rnlib.ops`` validates the
arguments, chooses this backend and differentiates it (these raw calls have no derivative of their own).

The compiled library is optional: a build without a C++ compiler installs without it, and then
:func:`available` is False (:func:`unavailable_reason` says why) and callers use the XLA backend. Setting the
environment variable ``RNLIB_DISABLE_NATIVE=1`` also makes it unavailable.

Transformations: jit; vmap (the handlers take leading batch dimensions, see :mod:`._partitioned`); sharded
inputs (row-partitioned with ``custom_partitioning``: each device normalises its own rows, dscale/dbias are
psum-ed; the width is gathered if it was split).

The extension is built by ``setup.py`` (editable installs build it in place, in ``kernels/native/``); after
changing the C++, rebuild with ``pip install -e .`` or ``python setup.py build_ext --inplace`` (a stale build is
detected by its ABI version and reported as unavailable).
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
from dataclasses import dataclass
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import _partitioned

__all__ = ["available", "unavailable_reason", "norm_fwd", "norm_bwd", "isa_level"]

Array = jax.Array
_ABI_VERSION = 1  # must equal RnlibNormCpuAbiVersion() in norm_cpu.cc
_TARGETS = {"rnlib_norm_fwd_cpu": "RnlibNormFwdCpu", "rnlib_norm_bwd_cpu": "RnlibNormBwdCpu"}
_lock = threading.Lock()
_state: Optional[tuple[bool, str]] = None  # (loaded, reason if not)
_lib: Optional[ctypes.CDLL] = None
# Instruction-set level requested from the handlers at trace time: 0 = the best this CPU runs, 1 = portable
# (SSE2 on x86-64), 2 = AVX2, 3 = AVX-512, 4 = AVX-512 with BF16 conversions (capped at what the CPU has). All
# give bit-identical results; tests set it to check that.
_ISA = 0


def _load() -> tuple[bool, str]:
    if os.environ.get("RNLIB_DISABLE_NATIVE", "") not in ("", "0"):
        return False, "disabled by RNLIB_DISABLE_NATIVE"
    try:
        spec = importlib.util.find_spec(__name__ + "._norm_cpu")  # finds the built library, does not import it
    except (ImportError, ValueError) as e:  # pragma: no cover - unusual import machinery
        return False, f"cannot look up the compiled library: {e}"
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return False, ("the compiled library rnlib/kernels/native/_norm_cpu*.so is missing (no C++ compiler "
                       "when rnlib was installed?); reinstall with g++ available")
    global _lib
    try:
        lib = ctypes.CDLL(spec.origin)
        abi = lib.RnlibNormCpuAbiVersion() if hasattr(lib, "RnlibNormCpuAbiVersion") else 0
        if abi != _ABI_VERSION:
            return False, (f"{spec.origin} is a stale build (ABI {abi}, expected {_ABI_VERSION}); rebuild it with "
                           f"`pip install -e .` or `python setup.py build_ext --inplace`")
        for target, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
        lib.RnlibNormCpuIsa.argtypes, lib.RnlibNormCpuIsa.restype = [ctypes.c_int], ctypes.c_int
    except Exception as e:  # noqa: BLE001 - any failure means "not available", never an exception
        return False, f"cannot load {spec.origin}: {type(e).__name__}: {e}"
    _lib = lib
    return True, ""


def available() -> bool:
    """Whether the compiled library is loaded and its FFI targets registered (loads it once; never raises)."""
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return _state[0]


def unavailable_reason() -> str:
    """Why :func:`available` is False ("" when it is True)."""
    available()
    return _state[1]


def isa_level(request: int = 0) -> int:
    """Instruction-set level the kernels run for ``request`` (0: best): 1 portable, 2 AVX2, 3 AVX-512, 4 AVX-512
    with BF16 conversions; 0 if the library is not available."""
    return int(_lib.RnlibNormCpuIsa(int(request))) if available() else 0


@dataclass(frozen=True)
class _Cfg:
    epsilon: float = 0.0
    rms: bool = False
    out_dtype: Any = None       # forward: y dtype; backward: dx dtype
    residual_dtype: Any = None  # forward only
    has_bias: bool = False      # backward only


def _i32(flag) -> np.int32:
    return np.int32(bool(flag))


def _fwd_ffi(key, *operands):
    """The forward custom call on (x, [residual], [scale], [bias]), any leading batch dimensions."""
    cfg, has_res, has_scale, has_bias = key
    shape = operands[0].shape
    results = [jax.ShapeDtypeStruct(shape, cfg.out_dtype)]
    if has_res:
        results.append(jax.ShapeDtypeStruct(shape, cfg.residual_dtype))
    results += [jax.ShapeDtypeStruct(shape[:-1], jnp.float32)] * 2
    return jax.ffi.ffi_call("rnlib_norm_fwd_cpu", results, vmap_method="broadcast_all")(
        *operands, epsilon=np.float32(cfg.epsilon), isa=np.int32(_ISA), rms=_i32(cfg.rms),
        has_residual=_i32(has_res), has_scale=_i32(has_scale), has_bias=_i32(has_bias))


def _fwd_call(cfg: _Cfg, x, residual, scale, bias):
    key = (cfg, residual is not None, scale is not None, bias is not None)
    kinds = ("rw",) + ("rw",) * key[1] + ("w",) * (key[2] + key[3])
    out_kinds = ("rw",) + ("rw",) * key[1] + ("r", "r")
    run = _partitioned.partitioned(_fwd_ffi, key, kinds, out_kinds, (False,) * len(out_kinds))
    outs = run(*[a for a in (x, residual, scale, bias) if a is not None])
    if residual is None:
        y, mean, rstd = outs
        return y, None, mean, rstd
    return tuple(outs)


def _bwd_ffi(key, *operands):
    """The backward custom call on (dy, h, mean, rstd, [scale], [dh_extra]), any leading batch dimensions."""
    cfg, has_scale, has_dh = key
    h = operands[1]
    results = [jax.ShapeDtypeStruct(h.shape, cfg.out_dtype)]
    results += [jax.ShapeDtypeStruct(h.shape[:-2] + h.shape[-1:], jnp.float32)] * (has_scale + bool(cfg.has_bias))
    return jax.ffi.ffi_call("rnlib_norm_bwd_cpu", results, vmap_method="broadcast_all")(
        *operands, isa=np.int32(_ISA), rms=_i32(cfg.rms), has_scale=_i32(has_scale),
        has_bias=_i32(cfg.has_bias), has_dh=_i32(has_dh))


def _bwd_call(cfg: _Cfg, dy, h, mean, rstd, scale, dh_extra):
    key = (cfg, scale is not None, dh_extra is not None)
    kinds = ("rw", "rw", "r", "r") + ("w",) * key[1] + ("rw",) * key[2]
    n_sums = key[1] + bool(cfg.has_bias)
    out_kinds = ("rw",) + ("w",) * n_sums
    run = _partitioned.partitioned(_bwd_ffi, key, kinds, out_kinds, (False,) + (True,) * n_sums)
    outs = list(run(*[a for a in (dy, h, mean, rstd, scale, dh_extra) if a is not None]))
    dx = outs.pop(0)
    dscale = outs.pop(0) if scale is not None else None
    dbias = outs.pop(0) if cfg.has_bias else None
    return dx, dscale, dbias


def norm_fwd(x: Array, residual: Optional[Array], scale: Optional[Array], bias: Optional[Array], *,
             epsilon: float, rms: bool, out_dtype: Any, residual_dtype: Any = None
             ) -> tuple[Array, Optional[Array], Array, Array]:
    """Layer/RMS norm forward of ``x`` (or ``h = x + residual``), normalised over the last axis.

    Args (validated by the caller): x (R, W) f32/bf16/f16; residual (R, W) or None; scale, bias (W,) or None;
    ``out_dtype`` of y; ``residual_dtype`` of h (None: residual's); all f32/bf16/f16.
    Returns ``(y, h, mean, rstd)``: y (R, W); h = round_{residual_dtype}(x + residual) or None; mean, rstd (R,)
    float32 with ``mean`` the mean of ``h - h[:, 0]`` for layer norm (zeros for RMS) and
    ``rstd = rsqrt(max(var, 0) + epsilon)`` (two-pass variance): the values of ``rnlib.ops``' plain maths.
    """
    if not available():
        raise RuntimeError(f"rnlib.kernels.native is not available: {unavailable_reason()}")
    if residual is not None:
        residual_dtype = np.dtype(residual.dtype if residual_dtype is None else residual_dtype)
    cfg = _Cfg(epsilon=float(epsilon), rms=bool(rms), out_dtype=np.dtype(out_dtype),
               residual_dtype=residual_dtype if residual is not None else None)
    return _fwd_call(cfg, x, residual, scale, bias)


def norm_bwd(dy: Array, h: Array, mean: Array, rstd: Array, scale: Optional[Array], dh_extra: Optional[Array], *,
             rms: bool, has_bias: bool, dx_dtype: Any) -> tuple[Array, Optional[Array], Optional[Array]]:
    """Backward of :func:`norm_fwd` from its saved ``(h, mean, rstd)``.

    With ``g = dy * scale`` and ``x_hat = ((h - h[:, 0]) - mean) * rstd`` (no shift for RMS)::

        dx = rstd * (g - x_hat * mean_W(g * x_hat) - mean_W(g)) + dh_extra     (no mean_W(g) for RMS)
        dscale = sum_R(dy * x_hat),   dbias = sum_R(dy)

    Args: dy, h (R, W); mean, rstd (R,) float32; scale (W,) or None; dh_extra (R, W) or None.
    Returns ``(dx (R, W) dx_dtype, dscale (W,) float32 or None, dbias (W,) float32 or None)``. The sums over
    rows use fixed row blocks reduced in a fixed order: bit-identical from run to run, for any thread count.
    """
    if not available():
        raise RuntimeError(f"rnlib.kernels.native is not available: {unavailable_reason()}")
    cfg = _Cfg(rms=bool(rms), out_dtype=np.dtype(dx_dtype), has_bias=bool(has_bias))
    return _bwd_call(cfg, dy, h, mean, rstd, scale, dh_extra)
