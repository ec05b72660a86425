"""Print the CPU performance targets of the core norms issue, measured side by side in one run.

    python benchmarks/norm_ratios.py [--shapes 4096x1024,8192x4096] [--dtypes float32,bfloat16] [--json FILE]

For each shape and dtype (layer_norm with scale and bias), timed round-robin with a jitted ``x + 1``:
  fwd / copy          rnlib xla forward time over copy time              (target <= 1.15)
  fwd+bwd / copy      rnlib xla forward+backward time over copy time     (a copy moves 2|x|, fwd+bwd 5|x|)
  linen / rnlib       flax.linen.LayerNorm fwd+bwd time over rnlib's    (target >= 2)
  rnlib / torch       rnlib fwd+bwd time over torch's layer_norm         (target <= 1.0; only if torch imports)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

from benchmarks.suites import norms, norms_torch  # noqa: E402


def ratios(rows: int, width: int, dtype: str, timing: dict) -> dict:
    """Time rnlib_xla, flax_linen and torch (when present) for one shape; return the ratios above."""
    impls = ("rnlib_xla", "flax_linen") + (("torch",) if norms_torch.available() else ())
    recs = norms.measure("layer_norm", rows, width, dtype, impls, ("fwd", "fwd+bwd"), timing, suite="norm_ratios")
    t = {(r["impl"], r["pass"]): r["time_s"] for r in recs}
    copy = recs[0]["copy_time_s"]
    xla, linen, torch = t[("rnlib_xla", "fwd+bwd")], t.get(("flax_linen", "fwd+bwd")), t.get(("torch", "fwd+bwd"))
    return {"shape": f"{rows}x{width}", "dtype": dtype, "copy_ms": copy * 1e3,
            "fwd/copy": t[("rnlib_xla", "fwd")] / copy, "fwd+bwd/copy": xla / copy,
            "linen/rnlib": linen / xla if linen else None, "rnlib/torch": xla / torch if torch else None,
            "times_ms": {f"{i} {p}": v * 1e3 for (i, p), v in t.items() if v}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="4096x1024,8192x4096")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--target-s", type=float, default=1.0, help="timed seconds per candidate")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    timing = {"target_s": args.target_s, "min_runs": 7, "max_runs": 100}
    results = []
    print(f"{'shape':>10} {'dtype':>9} {'copy ms':>8} {'fwd/copy':>9} {'fwd+bwd/copy':>13} {'linen/rnlib':>12} "
          f"{'rnlib/torch':>12}   (targets: fwd/copy <= 1.15, linen/rnlib >= 2, rnlib/torch <= 1)")
    for shape in args.shapes.split(","):
        rows, width = (int(v) for v in shape.split("x"))
        for dt in args.dtypes.split(","):
            r = ratios(rows, width, dt, timing)
            results.append(r)
            fmt = lambda v: f"{v:.2f}" if v is not None else "n/a"  # noqa: E731
            print(f"{r['shape']:>10} {dt:>9} {r['copy_ms']:8.2f} {fmt(r['fwd/copy']):>9} {fmt(r['fwd+bwd/copy']):>13} "
                  f"{fmt(r['linen/rnlib']):>12} {fmt(r['rnlib/torch']):>12}", flush=True)
    if not norms_torch.available():
        print("torch is not installed: rnlib/torch not measured")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
