"""Kernel correctness on the device without pytest (run.sh falls back to this when pytest is not installed).

Runs rnlib.kernels (forward + backward under one jit) through the Triton backend over every plan shape (narrow
multi-row tiles, whole rows, chunked rows; rows not divisible by the tiles), the fused add, RMS, and the hostile
inputs (mean 1e4 with std 1e-2, constant rows), and compares every output with a float64 NumPy reference:
float32 outputs within 1e-5 of their scale; bfloat16/float16 within one ulp of each element plus 5 % of an ulp
at the output's scale (the output rounding alone is half an ulp); dscale/dbias (float32 sums) within 4e-5 of the
sum of |dy| over rows. Then a determinism check. Exit code 0 only if every case passes.

    python benchmarks/device/gpu_selfcheck.py [--platform gpu|cpu] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from rnlib import kernels as K

F32, BF16, F16 = np.float32, jnp.bfloat16, np.float16
EPS = 1e-6
# rows, width, dtype, rms, residual, kind
CASES = [
    (199, 761, F32, False, False, "normal"), (37, 1153, F32, True, True, "normal"),
    (4096, 128, BF16, False, True, "normal"), (1, 1, F32, False, False, "normal"),
    (37, 7, F16, True, False, "normal"), (199, 1000, BF16, False, False, "offset"),
    (37, 1024, F16, False, True, "constant"), (4096, 4096, F32, False, True, "normal"),
    (199, 8192, BF16, True, True, "normal"), (37, 16384, F32, False, True, "offset"),
    (37, 65536, BF16, False, True, "normal"), (3, 40000, F32, False, True, "normal"),
    (2, 262144, F32, False, True, "normal"), (4, 262144, BF16, True, True, "normal"),
]


def make_inputs(rows, width, dtype, residual, kind, seed):
    rng = np.random.default_rng(seed)
    x = {"normal": lambda: rng.normal(size=(rows, width)),
         "offset": lambda: 1e4 + 1e-2 * rng.normal(size=(rows, width)),
         "constant": lambda: np.repeat(rng.choice([0.1, 3.0, -7.25], size=(rows, 1)), width, 1)}[kind]()
    res = (1e-2 if kind == "offset" else 1.0) * rng.normal(size=(rows, width)) if residual else None
    cast = lambda a: None if a is None else np.asarray(jnp.asarray(a, dtype))  # noqa: E731
    return dict(x=cast(x), residual=cast(res), scale=(1 + 0.5 * rng.normal(size=width)).astype(np.float32),
                bias=rng.normal(size=width).astype(np.float32), dy=cast(rng.normal(size=(rows, width))),
                dh_extra=cast(rng.normal(size=(rows, width))) if residual else None)


def reference(inp, rms, dtype):
    """float64: y, dx (+ dh_extra), dscale, dbias; h rounded to the dtype first for the fused add (the contract)."""
    h = inp["x"].astype(np.float64)
    if inp["residual"] is not None:
        h = np.asarray(jnp.asarray(h + inp["residual"].astype(np.float64), dtype), np.float64)
    mean = np.zeros((h.shape[0], 1)) if rms else h.mean(1, keepdims=True)
    var = np.mean((h - mean) ** 2, 1, keepdims=True)
    rstd = 1 / np.sqrt(var + EPS)
    xhat = (h - mean) * rstd
    s, b, dy = inp["scale"].astype(np.float64), inp["bias"].astype(np.float64), inp["dy"].astype(np.float64)
    y = xhat * s + (0 if rms else b)
    g = dy * s
    dx = g - xhat * np.mean(g * xhat, 1, keepdims=True)
    if not rms:
        dx = dx - np.mean(g, 1, keepdims=True)
    dx = rstd * dx + (0 if inp["dh_extra"] is None else inp["dh_extra"].astype(np.float64))
    return dict(y=y, dx=dx, dscale=np.sum(dy * xhat, 0), dbias=None if rms else np.sum(dy, 0))


def run(inp, rms, platform):
    def f(x, residual, scale, bias, dy, dh_extra):
        y, h, mean, rstd = K.norm_fwd(x, residual, scale, None if rms else bias, epsilon=EPS, rms=rms,
                                      out_dtype=x.dtype, residual_dtype=None if residual is None else x.dtype,
                                      platform=platform)
        dx, ds, db = K.norm_bwd(dy, x if h is None else h, mean, rstd, scale, dh_extra, rms=rms,
                                has_bias=not rms, dx_dtype=x.dtype, platform=platform)
        return dict(y=y, dx=dx, dscale=ds, dbias=db)

    args = [None if inp[k] is None else jnp.asarray(inp[k]) for k in ("x", "residual", "scale", "bias", "dy",
                                                                      "dh_extra")]
    out = jax.jit(f)(*args)
    return {k: None if v is None else np.asarray(v, np.float64) for k, v in out.items()}


def check(inp, rms, dtype, platform) -> dict:
    out, ref = run(inp, rms, platform), reference(inp, rms, dtype)
    ulp = float(jnp.finfo(dtype).eps)
    report = {}
    for k, r in ref.items():
        if r is None:
            assert out[k] is None, k
            continue
        scale = max(1.0, float(np.max(np.abs(r))))
        if k in ("dscale", "dbias"):  # float32 sums over rows: relative to the sum of magnitudes
            tol = 4e-5 * max(1.0, float(np.max(np.sum(np.abs(inp["dy"].astype(np.float64)), 0))))
        elif np.dtype(dtype) == np.float32:
            tol = 1e-5 * scale
        else:  # one ulp of each element (the output rounding is half of it) plus 5 % of an ulp at the scale
            tol = ulp * (np.abs(r) + 0.05 * scale)
        assert np.array_equal(np.isfinite(out[k]), np.isfinite(r)), f"{k}: non-finite pattern differs"
        err = np.abs(out[k] - r)
        worst = float(np.max(err / tol, initial=0.0))
        report[k] = f"{worst:.2g} of tol"
        assert worst <= 1, f"{k}: max error {worst:.3g} x the tolerance"
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--platform", default="gpu")
    p.add_argument("--quick", action="store_true", help="only cases up to 2**20 elements (CPU dry run)")
    a = p.parse_args(argv)
    runs = [c for c in CASES if not a.quick or c[0] * c[1] <= 1 << 20]
    failures = 0
    for rows, width, dtype, rms, res, kind in runs:
        name = f"{rows}x{width} {np.dtype(dtype).name} {'rms' if rms else 'ln'}{' add' if res else ''} {kind}"
        try:
            rep = check(make_inputs(rows, width, dtype, res, kind, seed=rows + width), rms, dtype, a.platform)
            print("PASS", name, rep, flush=True)
        except Exception:
            failures += 1
            print("FAIL", name, flush=True)
            traceback.print_exc(limit=4)
    inp = make_inputs(*((199, 761) if a.quick else (4096, 1024)), BF16, True, "normal", seed=1)
    r1, r2 = run(inp, False, a.platform), run(inp, False, a.platform)
    same = all(v is None or np.array_equal(v, r2[k]) for k, v in r1.items())
    print("PASS" if same else "FAIL", "determinism (same bits twice)")
    failures += not same
    print(f"{failures} failure(s) out of {len(runs) + 1} checks")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
