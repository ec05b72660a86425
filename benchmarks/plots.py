"""PNG plots of benchmark records (matplotlib, Agg backend; no display needed).

Every figure says in words what its axes mean and that higher (or lower) is faster, states the shapes and batch sizes
it read from the records, keeps one legend outside the panels, starts its y axes at 0 (shared where panels show the
same quantity), and prints next to the points how much faster one implementation is than a reference, so one picture
answers "which is faster, and by how much":

* ``norms_<dtype>.png``: speed as a fraction of a copy's bandwidth vs width, one line per implementation, a panel per
  (op, pass); the first rnlib implementation's points carry its speed ÷ the reference's (flax.linen when measured).
* ``train.png``: whole-train-step speed per model, bars relative to the reference implementation, labelled with
  examples per second.
* ``compile.png``: compile seconds and train-step milliseconds per depth, bars per mode; depths a mode skipped or
  failed are marked in place with the record's note.
"""
from __future__ import annotations

import math
import pathlib
import textwrap
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from benchmarks import harness, report  # noqa: E402

DPI = 90
OP_TITLES = {"layer_norm": "layer norm", "rms_norm": "RMS norm", "add_norm": "residual add + layer norm"}
PASS_TITLES = {"fwd": "forward", "bwd": "backward", "fwd+bwd": "forward + backward"}
IMPL_WORDS = {
    "rnlib_pallas": "rnlib, Pallas kernel", "rnlib_native": "rnlib, C++ CPU kernel", "rnlib_xla": "rnlib, pure XLA",
    "jnp_reference": "plain jnp under autodiff", "flax_nnx": "flax.nnx", "flax_linen": "flax.linen",
    "torch": "PyTorch eager", "pallas_gpu_ln": "jax.experimental.pallas GPU layer norm",
}
TRAIN_WORDS = {"rnlib": "rnlib models + train step", "rnlib_unrolled": "rnlib, ResNet blocks unrolled",
               "reference_linen": "reference Flax linen code", "torch": "PyTorch"}
COMPILE_WORDS = {"rnlib_scan": "each stage's blocks under lax.scan", "rnlib_unrolled": "every block unrolled"}
NORM_REFERENCES = ("flax_linen", "flax_nnx", "jnp_reference")  # what a ratio is against, first one measured
TRAIN_REFERENCE = "reference_linen"
COMPILE_REFERENCE = "rnlib_scan"


def _shape_text(shape: Iterable[int]) -> str:
    return "×".join(str(s) for s in shape)


def _impl_label(impl: str, words: dict[str, str] = IMPL_WORDS) -> str:
    return f"{impl} ({words[impl]})" if impl in words else impl


def _legend_outside(fig: Figure, handles: list, labels: list[str], title: str | None = None) -> None:
    """One legend for the whole figure, to the right of every panel (constrained layout makes room for it)."""
    fig.legend(handles, labels, loc="outside right center", fontsize=8, title=title, title_fontsize=8,
               frameon=False)


def _caption(fig: Figure, lines: list[str]) -> None:
    """Plain-words notes under the panels (constrained layout keeps them clear of the axes)."""
    chars = int(fig.get_figwidth() * 15)  # about what fits across the figure at 8 pt
    text = "\n".join(textwrap.fill(line, chars) for line in lines if line)
    fig.supxlabel(text, fontsize=8, ha="left", x=0.01, multialignment="left")


def _missing_handle(color: str = "black") -> Line2D:
    return Line2D([], [], marker="x", color=color, ls="", ms=8, mew=2)


def _speed_text(ratio: float) -> str:
    return f"{ratio:.2f}×" if ratio < 10 else f"{ratio:.0f}×"


# ----------------------------------------------------------------------------------------------------------- norms

def norm_reference(impls: Iterable[str]) -> str | None:
    """The implementation ratios are taken against: the first of NORM_REFERENCES present."""
    present = set(impls)
    return next((i for i in NORM_REFERENCES if i in present), None)


def norm_highlight(impls: Iterable[str]) -> str | None:
    """The implementation whose points carry ratios: the first rnlib one in the report's order (the fastest kind)."""
    return next((i for i in report._ordered(impls) if i.startswith("rnlib")), None)


def plot_norms(recs: list[dict], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """One figure per dtype: rows = ops, columns = passes; x = width (log 2 axis, plain tick labels), y = speed as a
    fraction of a copy's bandwidth, one y range from 0 shared by every panel."""
    paths = []
    for dt in sorted({r["dtype"] for r in recs}):
        dt_recs = [r for r in recs if r["dtype"] == dt]
        fig = norms_figure(dt, dt_recs)
        path = out_dir / f"norms_{dt}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        paths.append(path)
    return paths


def norms_figure(dt: str, recs: list[dict]) -> Figure:
    """The figure of ``plot_norms`` for one dtype's records."""
    ops = [o for o in ("layer_norm", "rms_norm", "add_norm") if any(r["name"] == o for r in recs)]
    ops += sorted({r["name"] for r in recs} - set(ops))
    passes = [p for p in harness.PASSES if any(r["pass"] == p for r in recs)]
    ok = [r for r in recs if r.get("frac_of_copy")]
    impls = report._ordered(r["impl"] for r in ok)
    ref, hi = norm_reference(impls), norm_highlight(impls)
    colors = {impl: f"C{k}" for k, impl in enumerate(impls)}
    widths = sorted({r["shape"][-1] for r in recs})
    top = max((r["frac_of_copy"] for r in ok), default=1.0)

    fig, axes = plt.subplots(len(ops), len(passes), figsize=(4.6 * len(passes) + 3.2, 3.0 * len(ops) + 1.6),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    for i, op in enumerate(ops):
        for j, p in enumerate(passes):
            ax = axes[i][j]
            sub = [r for r in ok if r["name"] == op and r["pass"] == p]
            by_impl = {impl: dict(sorted((r["shape"][-1], r["frac_of_copy"]) for r in sub if r["impl"] == impl))
                       for impl in impls}
            for impl in impls:
                pts = by_impl[impl]
                if pts:
                    ax.plot(list(pts), list(pts.values()), marker="o", ms=4, color=colors[impl],
                            lw=2.2 if impl == hi else 1.2, label=_impl_label(impl), zorder=3 if impl == hi else 2)
            if hi and ref and hi != ref:
                for w, f in by_impl[hi].items():
                    base = by_impl[ref].get(w)
                    if base:
                        ax.annotate(_speed_text(f / base), (w, f), textcoords="offset points", xytext=(0, 6),
                                    ha="center", fontsize=7, color=colors[hi], fontweight="bold",
                                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
            failed = sorted({r["impl"] for r in recs if r["name"] == op and r["pass"] == p and r.get("error")})
            if failed:
                ax.text(0.02, 0.02, "failed: " + ", ".join(failed), transform=ax.transAxes, fontsize=7, color="red")
            ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="a copy of the same array (x + 1) = 1.0")
            ax.set_title(f"{OP_TITLES.get(op, op)}, {PASS_TITLES.get(p, p)}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
            if j == 0:
                ax.set_ylabel("speed ÷ copy bandwidth\n(higher is faster)", fontsize=9)
            if i == len(ops) - 1:
                ax.set_xlabel("row width (features)", fontsize=9)
    ax = axes[0][0]
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths], rotation=45 if len(widths) > 5 else 0, fontsize=8)
    ax.minorticks_off()
    ax.set_ylim(0, 1.15 * max(top, 1.0))

    handles, labels = [], []
    for a in axes.flat:
        for h, lab in zip(*a.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    _legend_outside(fig, handles, labels, title="implementation")
    fig.suptitle(f"Norm speed, {dt}, on {recs[0]['device']}: speed as a fraction of a copy's bandwidth "
                 "(higher is faster)", fontsize=12)
    moved = "; ".join(f"{OP_TITLES.get(op, op)} {', '.join(str(harness.ARRAYS_MOVED[op][p]) for p in passes)}"
                      for op in ops if op in harness.ARRAYS_MOVED)
    _caption(fig, [
        "Speed = bytes the op must move ÷ its time, divided by the bandwidth of a copy: a jitted x + 1 on the same "
        "array (it reads and writes the array once), timed side by side in the same run. 1.0 (dashed) = as fast as "
        f"that copy. Arrays of |x| counted ({', '.join(PASS_TITLES.get(p, p) for p in passes)}): {moved}.",
        report.shapes_sentence(recs),
        (f"Numbers above {hi}'s points: its speed ÷ {ref}'s at the same shape (above 1 = {hi} faster)."
         if hi and ref and hi != ref else ""),
    ])
    return fig


# ----------------------------------------------------------------------------------------------------------- train

def train_input_text(r: dict) -> str:
    """'batch 32 × 32×32×3': a train or compile record's batch size and one example's shape."""
    batch, example = report.batch_and_example(r)
    return f"batch {batch} × {_shape_text(example)}" if batch else _shape_text(example)


def plot_train(recs: list[dict], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Grouped bars, one group per model: speed relative to the reference implementation (1.0 = as fast), each bar
    labelled with examples per second; failed or missing runs are marked in place."""
    if not any(report.train_speed(r) for r in recs):
        return []
    fig = train_figure(recs)
    path = out_dir / "train.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return [path]


def train_figure(recs: list[dict]) -> Figure:
    """The figure of ``plot_train``."""
    models = sorted({r["name"] for r in recs}, key=report._model_key)
    impls = report._ordered((r["impl"] for r in recs), report.TRAIN_IMPL_ORDER)
    colors = {impl: f"C{k}" for k, impl in enumerate(impls)}
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(7.0, 2.2 * len(models)) + 3.4, 5.2), layout="constrained")
    rel_all, ticks, refs_used, missing = [], [], set(), False
    for m, name in enumerate(models):
        cells = {r["impl"]: r for r in recs if r["name"] == name}
        speeds = {i: report.train_speed(r) for i, r in cells.items()}
        ref = TRAIN_REFERENCE if speeds.get(TRAIN_REFERENCE) else next((i for i in impls if speeds.get(i)), None)
        refs_used.add(ref)
        first = next(iter(cells.values()))
        ticks.append(f"{name}\n{train_input_text(first)}" + (f"\n(relative to {ref})" if ref != TRAIN_REFERENCE
                                                              and ref else ""))
        present = [i for i in impls if i in cells]
        for k, impl in enumerate(present):
            x = m - 0.4 + width * (k + 0.5) + width * (len(impls) - len(present)) / 2
            s = speeds.get(impl)
            if s and ref:
                rel = s / speeds[ref]
                rel_all.append(rel)
                ax.bar(x, rel, width * 0.95, color=colors[impl])
                mode = cells[impl].get("torch_mode")  # "compiled", or "eager (why)": only the first word fits
                text = f"{_speed_text(rel)}\n{s:,.0f}/s" + (f"\n{mode.split()[0]}" if mode else "")
                ax.annotate(text, (x, rel), textcoords="offset points", xytext=(0, 2), ha="center", va="bottom",
                            fontsize=7)
            else:
                why = cells[impl].get("error") or cells[impl].get("note") or "not timed"
                ax.plot([x], [0], marker="x", color=colors[impl], ms=8, mew=2, clip_on=False, zorder=4)
                missing = True
                ax.annotate(textwrap.fill(f"{impl}: {why}", 18), (x, 0), textcoords="offset points",
                            xytext=(0, 8), ha="center", va="bottom", fontsize=6, rotation=90, color="red")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(models)), ticks, fontsize=8)
    ax.set_ylim(0, 1.25 * max(rel_all + [1.0]))
    ref_words = TRAIN_REFERENCE if refs_used <= {TRAIN_REFERENCE} else "the reference"
    ax.set_ylabel(f"speed ÷ {ref_words}'s speed\n(higher is faster)")
    ax.grid(axis="y", alpha=0.3)
    handles: list = [Patch(color=colors[i]) for i in impls]
    labels = [_impl_label(i, TRAIN_WORDS) for i in impls]
    if missing:
        handles.append(_missing_handle())
        labels.append("not measured (reason beside it)")
    _legend_outside(fig, handles, labels, title="implementation")
    fig.suptitle(f"Training-step speed on {recs[0]['device']} (higher is faster)", fontsize=12)
    dtypes = sorted({str(r.get("dtype")) for r in recs if r.get("dtype")})
    _caption(fig, [
        "One whole training step per call (forward, backward and optimizer update), implementations timed side by "
        f"side in one run ({', '.join(dtypes)}). Bar height = examples per second ÷ {ref_words}'s (dashed line: "
        "as fast); the numbers on each bar: that ratio and examples (images or token sequences) per second. "
        "Under each model: batch size × shape of one example.",
    ])
    return fig


# --------------------------------------------------------------------------------------------------------- compile

def compile_missing_text(r: dict | None, what: str) -> str:
    """Why a compile record has no ``what`` ("compile_s" or "time_s"): its note, else "error" / "not run"."""
    if r is None:
        return "not run"
    note = r.get("note") or r.get("error") or ("not timed" if what == "time_s" else "error")
    return note


def plot_compile(recs: list[dict], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Two panels of bars per depth, one bar per mode: compile seconds, and train-step milliseconds (both from 0,
    lower is faster). A mode that skipped or failed a depth gets an ``×`` and its note where the bar would be."""
    if not any(r.get("compile_s") for r in recs):
        return []
    fig = compile_figure(recs)
    path = out_dir / "compile.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return [path]


def compile_figure(recs: list[dict]) -> Figure:
    """The figure of ``plot_compile``."""
    families = sorted({r.get("family", "") for r in recs})
    keys = sorted({(r.get("family", ""), r["depth"]) for r in recs})
    modes = report._ordered((r["impl"] for r in recs), (COMPILE_REFERENCE, "rnlib_unrolled"))
    colors = {m: f"C{k}" for k, m in enumerate(modes)}
    width = 0.8 / len(modes)
    missing = False
    fig, axes = plt.subplots(1, 2, figsize=(7.0 * 2 + 3.0, 5.4), layout="constrained")
    panels = (("compile_s", 1.0, "s", "seconds to compile one training step\n(lower is faster)"),
              ("time_s", 1e3, "ms", "milliseconds per training step\n(lower is faster)"))
    for ax, (field, scale, unit, ylabel) in zip(axes, panels):
        top = max((r[field] * scale for r in recs if r.get(field)), default=1.0)
        for g, key in enumerate(keys):
            cells = {r["impl"]: r for r in recs if (r.get("family", ""), r["depth"]) == key}
            ref = cells.get(COMPILE_REFERENCE, {}).get(field)
            for k, mode in enumerate(modes):
                x = g - 0.4 + width * (k + 0.5)
                r = cells.get(mode)
                v = r.get(field) if r else None
                if v:
                    ax.bar(x, v * scale, width * 0.95, color=colors[mode])
                    text = f"{v * scale:.1f} {unit}" if v * scale < 100 else f"{v * scale:.0f} {unit}"
                    if ref and mode != COMPILE_REFERENCE:
                        text += f"\n{_speed_text(v / ref)} scan"
                    ax.annotate(text, (x, v * scale), textcoords="offset points", xytext=(0, 2), ha="center",
                                va="bottom", fontsize=7)
                else:
                    ax.plot([x], [0], marker="x", color=colors[mode], ms=9, mew=2, clip_on=False, zorder=4)
                    missing = True
                    ax.annotate(textwrap.fill(compile_missing_text(r, field), 26), (x, 0), textcoords="offset points",
                                xytext=(0, 8), ha="center", va="bottom", fontsize=7, rotation=90, color="red")
        ax.set_xticks(range(len(keys)), [str(d) if len(families) == 1 else f"{f} {d}" for f, d in keys])
        ax.set_xlabel(f"{families[0] + ' ' if len(families) == 1 and families[0] else ''}depth (layers)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.3 * top)
        ax.grid(axis="y", alpha=0.3)
    handles: list = [Patch(color=colors[m]) for m in modes]
    labels = [_impl_label(m, COMPILE_WORDS) for m in modes]
    if missing:
        handles.append(_missing_handle())
        labels.append("not measured at that depth\n(reason beside it)")
    _legend_outside(fig, handles, labels, title="mode")
    fig.suptitle(f"Compile time and step time vs depth on {recs[0]['device']} (lower is faster)", fontsize=12)
    inputs = sorted({(train_input_text(r), str(r.get("dtype"))) for r in recs})
    _caption(fig, [
        "Compile = seconds to trace, lower and compile one training step (forward, backward, update); step = its "
        "median run time once compiled. \"N× scan\" on a bar: its height ÷ the scanned model's at the same depth "
        "(above 1 = slower than scan). × on the axis: a depth the mode did not measure, with the reason.",
        "Input: " + "; ".join(f"{text} ({dt})" for text, dt in inputs) + ".",
    ])
    return fig


PLOTTERS: dict[str, Any] = {"norms": plot_norms, "train": plot_train, "compile": plot_compile}
