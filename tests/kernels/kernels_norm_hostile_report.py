"""Print the kernels' errors on the hostile case (mean 1e4, std 1e-2) against the float64 reference.

Not a test (the assertions live in test_kernels_norm_hostile.py): a table of max abs error / natural scale of
y, dx, dscale, dbias for layer norm and the fused add, float32 and bfloat16, whole-row and chunked plans, on the
GPU-flavour (interpret) and TPU-interpret kernels. (In bfloat16, 1e4 + 1e-2 noise rounds to constant rows.)
Run: ``python tests/kernels/kernels_norm_hostile_report.py``.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kernels_norm_check import make_inputs, reference, run_kernels  # noqa: E402
from rnlib.kernels import Plan  # noqa: E402

PATHS = [  # (label, platform, plan, width)
    ("gpu whole-row", "cpu", None, 761),
    ("gpu chunked", "cpu", Plan("gpu", 4, 128, 10, 4, 2), 1153),
    ("tpu whole-row", "tpu_interpret", None, 761),
    ("tpu chunked", "tpu_interpret", Plan("tpu", 8, 256, 5, None, 1), 1153),
]


def rel_errors(inp, out, r):
    scale = dict(y=max(1.0, float(np.max(np.abs(r["y"])))), dx=r["dx_scale"], dscale=r["col_scale"],
                 dbias=r["dbias_scale"])
    # a zero scale (dscale of constant rows, whose xhat is 0) reports the absolute error
    return {k: float(np.max(np.abs(out[k].astype(np.float64) - r[k]))) / (scale[k] or 1.0) for k in scale}


def main():
    print(f"{'path':16s} {'dtype':9s} {'kind':8s} " + " ".join(f"{k:>9s}" for k in ("y", "dx", "dscale", "dbias")))
    for label, platform, plan, width in PATHS:
        for dtype in (np.float32, jnp.bfloat16):
            for res in (False, True):
                inp = make_inputs(37, width, dtype, kind="offset", residual=res, seed=3)
                out = run_kernels(inp, rms=False, platform=platform, plan=plan)
                e = rel_errors(inp, out, reference(inp, rms=False))
                print(f"{label:16s} {np.dtype(dtype).name:9s} {'add+ln' if res else 'ln':8s} "
                      + " ".join(f"{e[k]:9.2e}" for k in ("y", "dx", "dscale", "dbias")), flush=True)


if __name__ == "__main__":
    main()
