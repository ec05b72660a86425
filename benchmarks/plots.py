"""PNG plots of benchmark records (matplotlib, Agg backend; no display needed).

norms_<dtype>.png: fraction of copy bandwidth vs width, one line per implementation, a panel per (op, pass).
train.png: images/s per model, one bar per implementation. compile.png: compile seconds and step time vs depth.
"""
from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import harness, report  # noqa: E402


def plot_norms(recs: list[dict], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """One figure per dtype: rows = ops, columns = passes; x = width (log2), y = frac_of_copy."""
    paths = []
    ops = [o for o in ("layer_norm", "rms_norm", "add_norm") if any(r["name"] == o for r in recs)]
    passes = [p for p in harness.PASSES if any(r["pass"] == p for r in recs)]
    for dt in sorted({r["dtype"] for r in recs}):
        fig, axes = plt.subplots(len(ops), len(passes), figsize=(4.4 * len(passes), 3.2 * len(ops)), squeeze=False,
                                 sharex=True)
        for i, op in enumerate(ops):
            for j, p in enumerate(passes):
                ax = axes[i][j]
                sub = [r for r in recs if r["name"] == op and r["dtype"] == dt and r["pass"] == p
                       and r.get("frac_of_copy")]
                for impl in report._ordered(r["impl"] for r in sub):
                    pts = sorted((r["shape"][-1], r["frac_of_copy"]) for r in sub if r["impl"] == impl)
                    ax.plot([w for w, _ in pts], [f for _, f in pts], marker="o", label=impl)
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
                ax.set_xscale("log", base=2)
                ax.set_title(f"{op} {p}", fontsize=10)
                if j == 0:
                    ax.set_ylabel("fraction of copy bandwidth")
                if i == len(ops) - 1:
                    ax.set_xlabel("width")
                if i == 0 and j == len(passes) - 1 and ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=8)
        dev = recs[0]["device"]
        fig.suptitle(f"Norms, {dt}, {dev} (bytes that must move / time) / (x + 1 bandwidth)")
        fig.tight_layout()
        path = out_dir / f"norms_{dt}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_train(recs: list[dict], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Grouped bars: images/s per model (x), one bar per implementation."""
    ok = [r for r in recs if r.get("images_per_s")]
    if not ok:
        return []
    models = sorted({r["name"] for r in ok}, key=report._model_key)
    impls = report._ordered((r["impl"] for r in ok), report.TRAIN_IMPL_ORDER)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(models)), 4))
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        xs, ys = [], []
        for m, name in enumerate(models):
            r = next((r for r in ok if r["name"] == name and r["impl"] == impl), None)
            if r:
                xs.append(m + k * width)
                ys.append(r["images_per_s"])
        ax.bar(xs, ys, width, label=impl)
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(models))], models, rotation=15)
    ax.set_ylabel("examples / s (train step)")
    ax.set_title(f"Train-step throughput, {ok[0]['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "train.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


def plot_compile(recs: list[dict], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Two panels: compile seconds vs depth and step time vs depth, one line per (model, mode)."""
    ok = [r for r in recs if r.get("compile_s")]
    if not ok:
        return []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({(r.get("family", r["name"]), r["impl"]) for r in ok}):
        pts = sorted((r["depth"], r["compile_s"], r["time_s"]) for r in ok
                     if (r.get("family", r["name"]), r["impl"]) == key)
        label = " ".join(key)
        a1.plot([d for d, _, _ in pts], [c for _, c, _ in pts], marker="o", label=label)
        steps = [(d, t) for d, _, t in pts if t]
        a2.plot([d for d, _ in steps], [t * 1e3 for _, t in steps], marker="o", label=label)
    a2.set_yscale("log")
    a1.set_ylim(bottom=0)
    for ax, lab in ((a1, "compile seconds"), (a2, "train step (ms)")):
        ax.set_xscale("log")
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel(lab)
        ax.legend(fontsize=8)
    fig.suptitle(f"Compile time and step time vs depth, {ok[0]['device']}")
    fig.tight_layout()
    path = out_dir / "compile.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


PLOTTERS = {"norms": plot_norms, "train": plot_train, "compile": plot_compile}
