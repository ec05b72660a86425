"""Print the CPU performance targets of the core norms issue, measured side by side in one run.

    python benchmarks/norm_ratios.py [--shapes 4096x1024,8192x4096] [--dtypes float32,bfloat16] [--repeats 3]
                                     [--json FILE]

For each shape and dtype (layer_norm with scale and bias), timed round-robin with a jitted ``x + 1``, one line per
rnlib implementation measured (``xla``, and ``native`` -- the C++ CPU kernel impl="auto" uses on CPU -- when built):
  fwd / copy          forward time over copy time                        (target <= 1.15)
  fwd+bwd / copy      forward+backward time over copy time               (a copy moves 2|x|, fwd+bwd 5|x|)
  linen / rnlib       flax.linen.LayerNorm fwd+bwd time over rnlib's     (target >= 2)
  rnlib / torch       rnlib fwd+bwd time over torch's layer_norm         (target <= 1.0; only if torch imports)

Each ratio is the median over ``--repeats`` separate interleaved runs (the JSON keeps every run's value): on a
shared CPU one run's copy yardstick alone swung 2x between runs minutes apart.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

from benchmarks import harness  # noqa: E402
from benchmarks.suites import norms, norms_torch  # noqa: E402


def ratios(rows: int, width: int, dtype: str, timing: dict) -> list[dict]:
    """Time rnlib (xla, native), flax_linen and torch (when present) for one shape; the ratios above per impl."""
    mine = ("rnlib_xla",) + (("rnlib_native",) if norms.applicable("rnlib_native", "layer_norm", "cpu") else ())
    impls = mine + ("flax_linen",) + (("torch",) if norms_torch.available() else ())
    recs = norms.measure("layer_norm", rows, width, dtype, impls, ("fwd", "fwd+bwd"), timing, suite="norm_ratios")
    t = {(r["impl"], r["pass"]): r["time_s"] for r in recs}
    copy = recs[0]["copy_time_s"]
    linen, torch = t.get(("flax_linen", "fwd+bwd")), t.get(("torch", "fwd+bwd"))
    out = []
    for impl in mine:
        fb = t[(impl, "fwd+bwd")]
        out.append({"shape": f"{rows}x{width}", "dtype": dtype, "impl": impl.removeprefix("rnlib_"),
                    "copy_ms": copy * 1e3, "fwd/copy": t[(impl, "fwd")] / copy, "fwd+bwd/copy": fb / copy,
                    "linen/rnlib": linen / fb if linen else None, "rnlib/torch": fb / torch if torch else None,
                    "times_ms": {f"{i} {p}": v * 1e3 for (i, p), v in t.items() if v}})
    return out


RATIOS = ("copy_ms", "fwd/copy", "fwd+bwd/copy", "linen/rnlib", "rnlib/torch")


def median_of_runs(runs: list[list[dict]]) -> list[dict]:
    """Combine repeated :func:`ratios` results (same impls, same order): each ratio's median, plus all runs."""
    out = []
    for recs in zip(*runs):
        row = dict(recs[0])
        row["times_ms"] = [r["times_ms"] for r in recs]
        for k in RATIOS:
            vals = [r[k] for r in recs if r[k] is not None]
            row[k] = statistics.median(vals) if vals else None
            row[f"{k} runs"] = vals
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="4096x1024,8192x4096")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--target-s", type=float, default=1.0, help="timed seconds per candidate")
    ap.add_argument("--repeats", type=int, default=3, help="separate interleaved runs; ratios are their medians")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    timing = {"target_s": args.target_s, "min_runs": 7, "max_runs": 100}
    kept = harness.keep_freed_memory_mapped()
    print(f"allocator: {'freed memory kept mapped (mallopt)' if kept else 'default'}")
    results = []
    print(f"{'shape':>10} {'dtype':>9} {'impl':>7} {'copy ms':>8} {'fwd/copy':>9} {'fwd+bwd/copy':>13} "
          f"{'linen/rnlib':>12} {'rnlib/torch':>12}   (targets: fwd/copy <= 1.15, linen/rnlib >= 2, rnlib/torch <= 1;"
          f" medians of {max(args.repeats, 1)} runs)")
    fmt = lambda v: f"{v:.2f}" if v is not None else "n/a"  # noqa: E731
    for shape in args.shapes.split(","):
        rows, width = (int(v) for v in shape.split("x"))
        for dt in args.dtypes.split(","):
            for r in median_of_runs([ratios(rows, width, dt, timing) for _ in range(max(args.repeats, 1))]):
                results.append(r)
                print(f"{r['shape']:>10} {dt:>9} {r['impl']:>7} {r['copy_ms']:8.2f} {fmt(r['fwd/copy']):>9} "
                      f"{fmt(r['fwd+bwd/copy']):>13} {fmt(r['linen/rnlib']):>12} {fmt(r['rnlib/torch']):>12}",
                      flush=True)
    if not norms_torch.available():
        print("torch is not installed: rnlib/torch not measured")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
