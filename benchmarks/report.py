"""Writers for benchmark records: JSON per suite, one Markdown file of tables, PNG plots, a rich summary.

Tables pivot the flat records: norms by (op, dtype) with one row per (width, pass) and one column per implementation
(fraction of copy bandwidth, and milliseconds); train by model with images/s per implementation; compile by depth.
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Iterable

from benchmarks import harness

TRAIN_IMPL_ORDER = ("rnlib", "rnlib_unrolled", "reference_linen", "torch")
NORM_IMPL_ORDER = ("rnlib_pallas", "rnlib_native", "rnlib_xla", "jnp_reference", "flax_nnx", "flax_linen", "torch", "pallas_gpu_ln")


def write_json(records: list[dict], path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1, default=str) + "\n")


def read_json(path: pathlib.Path) -> list[dict]:
    return json.loads(path.read_text())


def _ordered(values: Iterable[str], order: Iterable[str] = NORM_IMPL_ORDER) -> list[str]:
    vals = set(values)
    first = [v for v in order if v in vals]
    return first + sorted(vals - set(first))


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def norms_markdown(recs: list[dict]) -> str:
    """One table per (op, dtype): rows (width, pass); cells "frac_of_copy (ms)"."""
    out = []
    impls = _ordered(r["impl"] for r in recs)
    for op in _ordered({r["name"] for r in recs}, ("layer_norm", "rms_norm", "add_norm")):
        for dt in sorted({r["dtype"] for r in recs if r["name"] == op}):
            sub = [r for r in recs if r["name"] == op and r["dtype"] == dt]
            cols = [i for i in impls if any(r["impl"] == i for r in sub)]
            cell = {(r["shape"][-1], r["pass"], r["impl"]): r for r in sub}
            shapes = sorted({tuple(r["shape"]) for r in sub}, key=lambda s: s[-1])
            passes = [p for p in harness.PASSES if any(r["pass"] == p for r in sub)]
            rows = []
            for shape in shapes:
                for p in passes:
                    row = [f"{shape[0]}x{shape[1]}", p]
                    for i in cols:
                        r = cell.get((shape[-1], p, i))
                        if r is None:
                            row.append("")
                        elif r.get("time_s") is None:
                            row.append("error" if r.get("error") else "-")
                        else:
                            row.append(f"{_fmt(r['frac_of_copy'])} ({r['time_s'] * 1e3:.2f} ms)")
                    rows.append(row)
            out.append(f"### {op}, {dt}\n\nFraction of copy bandwidth (higher is better; time in ms)\n\n"
                       + _table(["shape", "pass"] + cols, rows))
    return "\n\n".join(out)


def train_markdown(recs: list[dict]) -> str:
    """Rows: model; columns: input shape, each implementation's examples/s (step ms), rnlib / reference time."""
    impls = _ordered((r["impl"] for r in recs), TRAIN_IMPL_ORDER)
    rows = []
    for name in sorted({r["name"] for r in recs}, key=_model_key):
        cells = {r["impl"]: r for r in recs if r["name"] == name}
        row = [name, "x".join(map(str, next(iter(cells.values()))["shape"]))]
        for i in impls:
            r = cells.get(i)
            row.append("" if r is None else ("error" if r.get("time_s") is None else
                                             f"{r['images_per_s']:.0f} ({r['time_s'] * 1e3:.1f} ms)"))
        ours, ref = (cells.get(k, {}).get("time_s") for k in ("rnlib", "reference_linen"))
        row.append(_fmt(ours / ref if ours and ref else None))
        rows.append(row)
    return ("Training-step throughput, examples per second (step time in ms); last column: rnlib step time / "
            "reference step time (lower is better)\n\n" + _table(["model", "input"] + impls + ["rnlib / ref"], rows))


def compile_markdown(recs: list[dict]) -> str:
    """Rows: (model, depth); columns: mode; cells "compile s / step ms"."""
    modes = sorted({r["impl"] for r in recs})
    rows = []
    for key in sorted({(r.get("family", ""), r["depth"]) for r in recs}):
        row = [key[0], str(key[1])]
        for m in modes:
            r = next((r for r in recs if (r.get("family", ""), r["depth"]) == key and r["impl"] == m), None)
            row.append(_compile_cell(r))
        rows.append(row)
    return "Compile seconds / train-step ms vs depth\n\n" + _table(["model", "depth"] + modes, rows)


def _compile_cell(r: dict | None) -> str:
    if r is None:
        return "not run"
    if r.get("compile_s") is None:
        return r.get("note", "error")
    step = f"{r['time_s'] * 1e3:.1f} ms" if r.get("time_s") else "step not timed"
    return f"{r['compile_s']:.1f} s / {step}"


def _model_key(name: str) -> tuple:
    digits = "".join(c for c in name if c.isdigit())
    return (name.rstrip("0123456789"), int(digits) if digits else 0, name)


def write_markdown(by_suite: dict[str, list[dict]], path: pathlib.Path) -> None:
    recs = [r for v in by_suite.values() for r in v]
    if not recs:
        return
    head = (f"# rnlib benchmark results\n\nDevice: {recs[0]['device']}; jax {recs[0]['jax_version']}. "
            "Generated by `python -m benchmarks`; ratios are measured side by side in one run.\n")
    parts = [head]
    writers = {"norms": norms_markdown, "train": train_markdown, "compile": compile_markdown}
    for suite, fn in writers.items():
        if by_suite.get(suite):
            parts.append(f"## {suite}\n\n{fn(by_suite[suite])}\n")
            if suite == "norms":
                parts.append("\n".join(f"![{p.stem}]({p.name})" for p in sorted(path.parent.glob("norms_*.png"))))
            elif (path.parent / f"{suite}.png").exists():
                parts.append(f"![{suite}]({suite}.png)\n")
    path.write_text("\n".join(parts) + "\n")


def summary(suite: str, recs: list[dict]) -> tuple[str, list[str], list[list[str]]]:
    """(title, header, rows) for the end-of-run rich table of one suite."""
    if suite == "norms":
        impls = _ordered(r["impl"] for r in recs)
        groups: dict[tuple, dict[str, list[float]]] = {}
        for r in recs:
            g = groups.setdefault((r["name"], r["dtype"], r["pass"]), {})
            if r.get("frac_of_copy"):
                g.setdefault(r["impl"], []).append(r["frac_of_copy"])
        rows = [[op, dt, p] + [_fmt(harness.geomean(g[i])) if i in g else "-" for i in impls]
                for (op, dt, p), g in sorted(groups.items())]
        return ("norms: fraction of copy bandwidth (geometric mean over widths; higher is better)",
                ["op", "dtype", "pass"] + impls, rows)
    if suite == "train":
        impls = _ordered((r["impl"] for r in recs), TRAIN_IMPL_ORDER)
        rows = []
        for name in sorted({r["name"] for r in recs}, key=_model_key):
            cells = {r["impl"]: r.get("images_per_s") for r in recs if r["name"] == name}
            rows.append([name] + [_fmt(cells.get(i), ".0f") for i in impls])
        return "train: examples per second per train step (higher is better)", ["model"] + impls, rows
    modes = sorted({r["impl"] for r in recs})
    rows = []
    for key in sorted({(r.get("family", ""), r["depth"]) for r in recs}):
        cells = {r["impl"]: r for r in recs if (r.get("family", ""), r["depth"]) == key}
        rows.append([key[0], str(key[1])] + [_compile_cell(cells.get(m)) for m in modes])
    return "compile: seconds to lower + compile one train step / step time", ["model", "depth"] + modes, rows
