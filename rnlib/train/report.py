"""Run outputs: metrics.jsonl, final.json, training-curve PNG, and the progress display."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def read_metrics(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLog:
    """Appends one JSON object per line. On resume, rows past the restored step (logged by the interrupted run
    after its last checkpoint) are dropped so the file reads as one uninterrupted run."""

    def __init__(self, path: str, resume_step: int | None):
        self.path = path
        rows = [r for r in read_metrics(path) if resume_step is not None and r.get("step", 0) <= resume_step]
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        self.rows = rows

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def write_json(path: str, obj: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def plot_curves(rows: list[dict[str, Any]], path: str, title: str = "",
                final_test_error: float | None = None) -> None:
    """Loss and error (%) against step; test error as points where it was measured (and at the end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(steps, [r["loss"] for r in rows], lw=1)
    ax1.set(xlabel="step", ylabel="train loss", yscale="log")
    ax2.plot(steps, [100 * r["train_error"] for r in rows], lw=1, label="train (minibatch, augmented)")
    test = [(r["step"], 100 * r["test_error"]) for r in rows if "test_error" in r]
    if final_test_error is not None and (not test or test[-1][0] != steps[-1]):
        test.append((steps[-1], 100 * final_test_error))
    if test:
        ax2.plot(*zip(*test), "o-", ms=3, label="test")
    ax2.set(xlabel="step", ylabel="error (%)")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class Progress:
    """A rich progress bar (loss, error, steps/s), or plain log lines when `quiet` / rich is missing."""

    def __init__(self, total: int, start: int, quiet: bool, description: str = "train", enabled: bool = True):
        self.total, self.quiet, self._bar, self.enabled = total, quiet, None, enabled
        self._t0, self._s0, self._last_print = time.perf_counter(), start, 0.0
        if enabled and not quiet:
            try:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn
                from rich.progress import TimeElapsedColumn, TimeRemainingColumn
            except ImportError:
                self.quiet = True
            else:
                self._bar = RichProgress(
                    TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}  err {task.fields[err]}  {task.fields[rate]} steps/s"),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
                self._task = self._bar.add_task(description, total=total, completed=start, loss="-", err="-",
                                                rate="-")
                self._bar.start()

    def update(self, step: int, loss: float, error: float) -> None:
        # Rate over the last interval: the first one includes compilation.
        now = time.perf_counter()
        rate = (step - self._s0) / max(now - self._t0, 1e-9)
        self._t0, self._s0 = now, step
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{loss:.4f}", err=f"{100 * error:.2f}%",
                             rate=f"{rate:.1f}")
        elif self.enabled and (time.perf_counter() - self._last_print > 10 or step == self.total):
            self._last_print = time.perf_counter()
            print(f"step {step}/{self.total}  loss {loss:.4f}  train err {100 * error:.2f}%  {rate:.1f} steps/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
