"""Compile every Pallas kernel with the real sm_90 or TPU compiler, on a host with neither device.

    python -m benchmarks.compile_check --target sm_90|tpu_v5e|tpu_v6e|tpu_v5p [--quick] [--out DIR]

Writes ``DIR/compile_<target>.json`` (one record per pallas_call: see ``benchmarks._compile_check.report.FIELDS``)
and ``DIR/compile_<target>.md``. sm_90: registers, spill bytes, shared memory and static occupancy from ptxas;
TPU: Mosaic compile status, scoped VMEM per kernel against the generation's limit, HBM, and bytes accessed against
the ideal and (full sweep only) against XLA's own fusion. The compilers come from the ``aot`` extra (``pip install -e ".[aot]"``);
without it the command says so and exits with status 2. Exit status 1 if any kernel fails to compile (documented
HBM overflows excepted), spills on sm_90, or exceeds 80 % of a TPU generation's scoped VMEM.
"""
from __future__ import annotations

import argparse
import sys
import time

TARGETS = ("sm_90", "tpu_v5e", "tpu_v6e", "tpu_v5p")


def run(target: str, quick: bool, rows: tuple[int, ...] | None = None, log=print) -> list[dict]:
    """Records for ``target`` over the sweep (``quick``: the representative subset; ``rows``: only these)."""
    from benchmarks._compile_check import cases

    if target == "sm_90":
        from benchmarks._compile_check import sm90 as mod
        check = mod.check_case
    else:
        from benchmarks._compile_check import tpu as mod
        check = lambda c: mod.check_case(c, target, compare_xla=not quick)  # noqa: E731
    todo = cases.sweep(quick, rows or cases.ROWS)
    records: list[dict] = []
    t0 = time.perf_counter()
    for i, case in enumerate(todo):
        recs = check(case)
        records += recs
        bad = [r for r in recs if r["status"] != "ok"]
        log(f"[{i + 1}/{len(todo)}] {case.kernel} {case.rows}x{case.width} {case.dtype}: {len(recs)} kernels"
            + (f", {len(bad)} not ok" if bad else "") + f" ({time.perf_counter() - t0:.0f} s)")
    return records


def failures(records: list[dict], target: str) -> list[str]:
    out = []
    for r in records:
        name = f"{r['kernel']}/{r['pass']} {r['rows']}x{r['width']} {r['dtype']}"
        if r["status"] == "error":
            out.append(f"{name}: {r['message']}")
        if r["spill_bytes"]:
            out.append(f"{name}: {r['spill_bytes']} spill bytes")
        if r["vmem_pct"] is not None and r["vmem_pct"] > 80:
            out.append(f"{name}: scoped VMEM {r['vmem_pct']} % of the limit")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, choices=TARGETS)
    p.add_argument("--quick", action="store_true", help="the representative subset the tests run")
    p.add_argument("--out", default="benchmarks/results/compile")
    p.add_argument("--rows", type=int, nargs="+", help="full sweep over these row counts only")
    a = p.parse_args(argv)
    if a.target == "sm_90":
        from benchmarks._compile_check.sm90 import tools_missing
    else:
        from benchmarks._compile_check.tpu import tools_missing
    missing = tools_missing()
    if missing:
        print(f"compile_check --target {a.target} needs {missing}: install the extra with "
              f'`pip install -e ".[aot]"` (or `pip install "rnlib[aot]"`)', file=sys.stderr)
        return 2
    from benchmarks._compile_check import report

    t0 = time.perf_counter()
    records = run(a.target, a.quick, tuple(a.rows) if a.rows else None)
    import jax
    meta = {"target": a.target, "sweep": "quick" if a.quick else f"full, rows {a.rows or 'all'}", "jax": jax.__version__,
            "seconds": round(time.perf_counter() - t0)}
    if a.target == "sm_90":
        import triton
        meta["triton"] = triton.__version__
    js, md = report.write(records, a.target, a.out, meta)
    print(report.summary(records))
    print(f"wrote {js} and {md}")
    bad = failures(records, a.target)
    for b in bad:
        print("FAIL", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
