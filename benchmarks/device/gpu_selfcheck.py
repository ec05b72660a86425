"""Kernel correctness on the device without pytest (run.sh falls back to this when pytest is not installed).

Runs the same checker as tests/kernels (float64 reference, XLA path, finiteness, dtypes) through the Triton backend
over every width of the issue, rows not divisible by the tiles, the fused add, RMS, and forced small-tile plans,
then a determinism check. Exit code 0 only if every case passes.

    python benchmarks/device/gpu_selfcheck.py [--platform gpu|cpu] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(REPO, "tests"), os.path.join(REPO, "tests", "kernels")]

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kernels_norm_check import check, make_inputs, run_kernels  # noqa: E402
from rnlib.kernels.heuristics import Plan  # noqa: E402

F32, BF16, F16 = np.float32, jnp.bfloat16, np.float16
# rows, width, dtype, rms, residual, scale, bias
CASES = [
    (199, 761, F32, False, False, True, True), (37, 1153, F32, True, True, True, False),
    (4096, 128, BF16, False, True, True, True), (1, 1, F32, False, False, True, True),
    (37, 1, BF16, True, False, True, False), (37, 7, F16, True, False, False, False),
    (199, 1000, BF16, False, False, False, True), (37, 1024, F16, False, True, True, True),
    (4096, 4096, F32, False, True, True, True), (199, 4096, BF16, True, True, True, True),
    (37, 65536, BF16, False, True, True, True), (37, 65536, F32, True, False, True, False),
    (3, 40000, F32, False, True, True, True), (2, 262144, F32, False, True, True, True),
    (4, 262144, BF16, True, True, True, False), (4096, 1024, BF16, False, True, True, True),
]
FORCED = [
    (Plan("gpu", 4, 128, 10, 4, 4), (37, 1153, F32, False, True, True, True)),
    (Plan("gpu", 8, 1024, 1, 4, 4), (199, 761, BF16, True, True, True, True)),
    (Plan("gpu", 2, 8, 1, 2, 8), (37, 7, F16, False, False, True, True)),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--platform", default="gpu")
    p.add_argument("--quick", action="store_true", help="only cases up to 2**20 elements (CPU dry run)")
    a = p.parse_args(argv)
    failures = 0
    runs = [(None, c) for c in CASES] + FORCED
    if a.quick:
        runs = [(plan, c) for plan, c in runs if c[0] * c[1] <= 1 << 20]
    for plan, (rows, width, dtype, rms, res, s, b) in runs:
        name = f"{rows}x{width} {np.dtype(dtype).name} {'rms' if rms else 'ln'}{' add' if res else ''}" + (
            f" plan={plan}" if plan else "")
        try:
            rep = check(make_inputs(rows, width, dtype, residual=res, scale=s, bias=b, seed=rows + width),
                        rms=rms, platform=a.platform, plan=plan)
            print("PASS", name, {k: f"{e:.2g}/{t:.2g}" for k, (e, t) in rep.items()}, flush=True)
        except Exception:
            failures += 1
            print("FAIL", name, flush=True)
            traceback.print_exc(limit=4)
    inp = make_inputs(*((199, 761) if a.quick else (4096, 1024)), BF16, residual=True, seed=1)
    r1, r2 = run_kernels(inp, rms=False, platform=a.platform), run_kernels(inp, rms=False, platform=a.platform)
    same = all(v is None or np.array_equal(v.view(np.uint8), r2[k].view(np.uint8)) for k, v in r1.items())
    print("PASS" if same else "FAIL", "determinism (same bits twice)")
    failures += not same
    print(f"{failures} failure(s) out of {len(runs) + 1} checks")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
