"""``python -m benchmarks [--suite norms|train|compile|all] [--quick] [--out DIR]``

Runs the chosen suites on JAX's default device, with a progress bar; writes DIR/<suite>.json (a list of records),
DIR/results.md (tables) and PNG plots into DIR, and prints a summary table per suite.
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import sys
import time

SUITES = ("norms", "train", "compile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    ap.add_argument("--suite", choices=SUITES + ("all",), default="all")
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer runs (all suites < ~10 min on CPU)")
    ap.add_argument("--out", default="out/benchmarks", help="output folder (default: out/benchmarks)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jax

    from benchmarks import harness, report

    harness.keep_freed_memory_mapped()  # same allocator behaviour for every candidate (see its docstring)

    try:
        from benchmarks import plots
    except ImportError as e:  # matplotlib missing (e.g. a bare GPU image): tables and JSON still get written
        plots = None
        print(f"no plots: {e}")
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Table
    except ImportError:
        from benchmarks import plain_console as fallback
        Console, Progress, Table = fallback.Console, fallback.Progress, fallback.Table
        BarColumn = MofNCompleteColumn = TextColumn = TimeElapsedColumn = fallback.column

    console = Console(width=None if sys.stdout.isatty() else 160)  # logs: do not squeeze the tables
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = SUITES if args.suite == "all" else (args.suite,)
    console.print(f"rnlib benchmarks on {harness.device_name()} (jax {jax.__version__}), "
                  f"suites: {', '.join(names)}{' (quick)' if args.quick else ''} -> {out}")

    plans = {n: importlib.import_module(f"benchmarks.suites.{n}").default_plan(args.quick) for n in names}
    by_suite: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[current]}"))
    with Progress(*columns, console=console) as progress:
        bars = {n: progress.add_task(n, total=len(plans[n]), current="") for n in names}
        for n in names:
            recs: list[dict] = []
            for i, task in enumerate(plans[n]):
                progress.update(bars[n], current=task.label)
                recs.extend(task.run())
                progress.advance(bars[n])
                if not sys.stdout.isatty():  # no live bar in a log file: one line per finished task
                    print(f"[{n} {i + 1}/{len(plans[n])} {time.perf_counter() - t0:5.0f} s] {task.label}",
                          flush=True)
            progress.update(bars[n], current="done")
            by_suite[n] = recs
            report.write_json(recs, out / f"{n}.json")
            if plots is not None:
                plots.PLOTTERS[n](recs, out)

    # Keep results of suites not run this time in the Markdown file (e.g. --suite train after a full run).
    for n in SUITES:
        if n not in by_suite and (out / f"{n}.json").exists():
            by_suite[n] = report.read_json(out / f"{n}.json")
    report.write_markdown({n: by_suite[n] for n in SUITES if n in by_suite}, out / "results.md")

    for n in names:
        title, header, rows = report.summary(n, by_suite[n])
        table = Table(title=title)
        for h in header:
            table.add_column(h, justify="left" if h in ("op", "dtype", "pass", "model") else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print(f"wrote {out}/results.md and {', '.join(f'{n}.json' for n in names)} "
                  f"in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
