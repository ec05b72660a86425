"""The sweep: which kernels, shapes and dtypes are compiled, and the jax functions that call them.

Each case is one of four ops (``layer_norm`` with scale and bias, ``rms_norm`` with scale, and their fused-residual
forms ``add_layer_norm`` / ``add_rms_norm``) at one (rows, width, dtype); its forward and backward are compiled as
two separate jitted functions so that every pallas_call is attributed to its op and direction.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rnlib import kernels as K

KERNELS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")
WIDTHS = (1, 7, 128, 256, 761, 1000, 1024, 4096, 8192, 16384, 40000, 65536, 262144, 262147)
ROWS = (7, 4096, 4097)
DTYPES = ("float32", "bfloat16", "float16")
# --quick (the tests): each (op, dtype) at one of three shapes, so that every plan shape (multi-row tiles; whole
# row forward with a chunked backward; chunked both ways, with edge tiles in both dims) meets every op and dtype.
QUICK = [(4097, 761), (4096, 16384), (4097, 32768 + 3)]

# pallas_call name -> the record's ``pass``
PASSES = {"rn_norm_fwd": "fwd", "rn_norm_fwd_stats": "fwd_stats", "rn_norm_fwd_apply": "fwd_apply",
          "rn_norm_bwd_sums": "bwd_sums", "rn_norm_bwd": "bwd"}


@dataclasses.dataclass(frozen=True)
class Case:
    kernel: str
    rows: int
    width: int
    dtype: str

    @property
    def rms(self) -> bool:
        return "rms" in self.kernel

    @property
    def residual(self) -> bool:
        return self.kernel.startswith("add_")

    @property
    def ideal_bytes(self) -> dict[str, int]:
        """Minimum HBM traffic of each direction: every (rows, width) array read or written once.

        Forward: x (+ residual, + h written) + y; backward: dy, h, dx (+ dh_extra). Parameters and statistics are
        O(rows + width) and counted too (float32 mean/rstd per row, scale/bias and their gradients per column).
        """
        item = np.dtype(jnp.dtype(self.dtype)).itemsize
        big = self.rows * self.width * item
        n_stats = 1 if self.rms else 2
        n_params = 1 if self.rms else 2
        fwd = big * (2 + 2 * self.residual) + 4 * (self.rows * n_stats + self.width * n_params)
        bwd = big * (3 + self.residual) + 4 * (self.rows * n_stats + self.width * (1 + 2 * n_params))
        return {"fwd": fwd, "bwd": bwd}


def sweep(quick: bool, rows: tuple[int, ...] = ROWS) -> list[Case]:
    if quick:
        pairs = list(itertools.product(KERNELS, DTYPES))
        return [Case(k, *QUICK[i % len(QUICK)], d) for i, (k, d) in enumerate(pairs)]
    return [Case(k, r, w, d) for r, w, d, k in itertools.product(rows, WIDTHS, DTYPES, KERNELS)]


def functions(case: Case, platform: str) -> dict[str, tuple[Callable, list]]:
    """{"fwd": (fn, avals), "bwd": (fn, avals)} calling rnlib.kernels for ``platform`` ("gpu" or "tpu")."""
    r, w, dt = case.rows, case.width, jnp.dtype(case.dtype)
    big = jax.ShapeDtypeStruct((r, w), dt)
    vec = jax.ShapeDtypeStruct((w,), jnp.float32)
    stat = jax.ShapeDtypeStruct((r,), jnp.float32)
    rms, res = case.rms, case.residual

    def fwd(x, *rest):
        it = iter(rest)
        residual = next(it) if res else None
        scale = next(it)
        bias = None if rms else next(it)
        y, h, mean, rstd = K.norm_fwd(x, residual, scale, bias, epsilon=1e-6, rms=rms, out_dtype=dt,
                                      residual_dtype=dt if res else None, platform=platform)
        return (y, h, mean, rstd) if res else (y, mean, rstd)

    def bwd(dy, h, mean, rstd, scale, *rest):
        extra = rest[0] if res else None
        return K.norm_bwd(dy, h, mean, rstd, scale, extra, rms=rms, has_bias=not rms, dx_dtype=dt,
                          platform=platform)

    fwd_avals = [big] + [big] * res + [vec] * (1 if rms else 2)
    bwd_avals = [big, big, stat, stat, vec] + [big] * res
    return {"fwd": (fwd, fwd_avals), "bwd": (bwd, bwd_avals)}
