"""Writers for benchmark records: JSON per suite, one Markdown file of tables, PNG plots, a rich summary.

Tables pivot the flat records: norms by (op, dtype) with one row per (shape, pass) and one column per implementation
(fraction of copy bandwidth, and milliseconds); train by model with examples/s per implementation; compile by depth.
Shapes and batch sizes come from the records.

    python -m benchmarks.report --replot DIR   # plots and results.md again from DIR/{norms,train,compile}.json
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
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
            out.append(f"### {op}, {dt}\n\nSpeed as a fraction of a copy's bandwidth (higher is faster; in brackets "
                       "the time per call in ms); shape = rows × width\n\n" + _table(["shape", "pass"] + cols, rows))
    return NORMS_INTRO + " " + shapes_sentence(recs) + "\n\n" + "\n\n".join(out)


def shapes_sentence(recs: list[dict]) -> str:
    """'Shapes (rows × width): 4096×256, 256×4096 (1,048,576 elements each).' from the records' ``shape`` fields."""
    shapes = sorted({tuple(r["shape"]) for r in recs}, key=lambda s: (s[-1], s))
    sizes = {math.prod(s) for s in shapes}
    each = f" ({sizes.pop():,} elements each)" if len(sizes) == 1 else ""
    return f"Shapes (rows × width): {', '.join('×'.join(map(str, s)) for s in shapes)}{each}."


NORMS_INTRO = ("Each figure is the bytes an op must move divided by its time, as a fraction of the bandwidth of a "
               "copy: a jitted `x + 1` on the same array (it reads and writes the array once), timed side by side in "
               "the same run; 1.0 = as fast as that copy. Arrays of |x| counted (forward, backward, forward+backward): "
               + "; ".join(f"{op} {', '.join(str(v) for v in moved.values())}"
                           for op, moved in harness.ARRAYS_MOVED.items()) + ".")


def batch_and_example(r: dict) -> tuple[int | None, list[int]]:
    """(batch size, one example's shape) of a record: its ``batch`` field, else the leading size of its ``shape``;
    with neither a ``shape`` nor more than a batch in it, an ``image_size`` field (int or [h, w]) when there is one."""
    shape = [int(s) for s in r.get("shape") or []]
    batch = int(r["batch"]) if r.get("batch") else (shape[0] if shape else None)
    example = shape[1:] if shape and shape[0] == batch else shape
    if not example and r.get("image_size"):
        size = r["image_size"]
        example = list(size) if isinstance(size, (list, tuple)) else [size, size]
    return batch, example


def train_speed(r: dict | None) -> float | None:
    """Examples per second of a train record: ``images_per_s`` when recorded, else batch / time_s; None if not run."""
    if not r:
        return None
    if r.get("images_per_s"):
        return float(r["images_per_s"])
    batch = batch_and_example(r)[0]
    return batch / r["time_s"] if batch and r.get("time_s") else None


def _batch_and_input(r: dict) -> tuple[str, str]:
    batch, example = batch_and_example(r)
    return ("-" if batch is None else str(batch)), "x".join(map(str, example))


def train_markdown(recs: list[dict]) -> str:
    """Rows: model; columns: batch, one example's shape, each implementation's examples/s (step ms), and rnlib's
    speed / the reference's."""
    impls = _ordered((r["impl"] for r in recs), TRAIN_IMPL_ORDER)
    rows = []
    for name in sorted({r["name"] for r in recs}, key=_model_key):
        cells = {r["impl"]: r for r in recs if r["name"] == name}
        row = [name, *_batch_and_input(next(iter(cells.values())))]
        for i in impls:
            row.append(_train_cell(cells.get(i)))
        ours, ref = train_speed(cells.get("rnlib")), train_speed(cells.get("reference_linen"))
        row.append(_fmt(ours / ref if ours and ref else None))
        rows.append(row)
    return ("Whole training step (forward, backward, optimizer update): examples per second (step time in ms), "
            "higher is faster; last column: rnlib's speed / reference_linen's (above 1 = rnlib faster)\n\n"
            + _table(["model", "batch", "one example"] + impls + ["rnlib / ref speed"], rows))


def _train_cell(r: dict | None) -> str:
    if r is None:
        return ""
    speed = train_speed(r)
    if speed is None:
        return r.get("error") or r.get("note") or "error"
    return f"{speed:.0f} ({r['time_s'] * 1e3:.1f} ms)" if r.get("time_s") else f"{speed:.0f}"


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
    inputs = sorted({(*_batch_and_input(r), str(r.get("dtype"))) for r in recs})
    return ("Seconds to trace, lower and compile one training step / its run time in ms, vs depth (lower is faster); "
            "input: " + "; ".join(f"batch {b} of {s} ({d})" for b, s, d in inputs) + "\n\n"
            + _table(["model", "depth"] + modes, rows))


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
            "Generated by `python -m benchmarks`; ratios are measured side by side in one run. "
            "`python -m benchmarks.report --replot DIR` redraws the plots and this file from the JSON records.\n")
    parts = [head]
    writers = {"norms": norms_markdown, "train": train_markdown, "compile": compile_markdown}
    for suite, fn in writers.items():
        if by_suite.get(suite):
            parts.append(f"## {suite}\n\n{fn(by_suite[suite])}\n")
            if suite == "norms":
                parts.append("\n".join(f"![{p.stem}]({p.name})" for p in sorted(path.parent.glob("norms_*.png")))
                             + "\n")
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


def replot(out: pathlib.Path) -> list[pathlib.Path]:
    """Redraw ``out``'s PNGs and ``results.md`` from the suite JSON files there (no timing is run)."""
    from benchmarks import plots  # matplotlib only when plotting

    by_suite = {n: read_json(out / f"{n}.json") for n in plots.PLOTTERS if (out / f"{n}.json").exists()}
    if not by_suite:
        raise FileNotFoundError(f"no {{{','.join(plots.PLOTTERS)}}}.json in {out}")
    written = [p for n, recs in by_suite.items() for p in plots.PLOTTERS[n](recs, out)]
    write_markdown(by_suite, out / "results.md")
    return written + [out / "results.md"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description="Redraw benchmark plots and tables "
                                 "from the JSON records that `python -m benchmarks` wrote.")
    ap.add_argument("--replot", metavar="DIR", required=True, type=pathlib.Path,
                    help="folder holding norms.json / train.json / compile.json (e.g. benchmarks/results)")
    args = ap.parse_args(argv)
    try:
        written = replot(args.replot)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
