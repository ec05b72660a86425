"""Run outputs: metrics.jsonl, final.json, training-curve PNG, and the progress display."""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from typing import Any, TextIO


def read_metrics(path: str, torn: list[str] | None = None) -> list[dict[str, Any]]:
    """The JSON rows of `path` ([] if it does not exist). A line that is not a JSON object (a run killed while
    appending leaves a partial last line) is skipped and, when `torn` is given, appended to it."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            elif torn is not None:
                torn.append(line)
    return rows


class MetricsLog:
    """Appends one JSON object per line. On resume, rows past the restored step (logged by the interrupted run
    after its last checkpoint) are dropped so the file reads as one uninterrupted run; a torn line (the run was
    killed mid-append) is moved to `<path>.torn` with one warning."""

    def __init__(self, path: str, resume_step: int | None):
        self.path = path
        torn: list[str] = []
        rows = [r for r in read_metrics(path, torn) if resume_step is not None and r.get("step", 0) <= resume_step]
        if torn and resume_step is not None:
            with open(path + ".torn", "a") as f:
                f.writelines(line if line.endswith("\n") else line + "\n" for line in torn)
            warnings.warn(f"{path}: dropped {len(torn)} unreadable line(s) (a run killed while writing them); "
                          f"kept in {path}.torn", RuntimeWarning, stacklevel=2)
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
    """Training progress: a rich progress bar on a terminal; plain lines when the output is not a terminal (a log
    file, nohup), with `quiet`, or without rich.

    `compiling()` before the first step says that the step is being compiled (the bar shows it until the first
    update; plain output prints a line). Plain lines: one every `print_every` steps and at the last step.
    """

    def __init__(self, total: int, start: int, quiet: bool, description: str = "train", enabled: bool = True,
                 print_every: int = 100, stream: TextIO | None = None, console: Any = None):
        self.total, self.enabled, self.print_every = total, enabled, max(1, print_every)
        self.stream = stream if stream is not None else sys.stdout
        self._bar, self._compile_t0 = None, None
        self._t0, self._s0, self._last_printed = time.perf_counter(), start, start
        terminal = console is not None or _isatty(self.stream)
        self.plain = quiet or not terminal
        if enabled and not self.plain:
            try:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn
                from rich.progress import TimeElapsedColumn, TimeRemainingColumn
            except ImportError:
                self.plain = True
            else:
                self._bar = RichProgress(
                    TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    transient=False, **({"console": console} if console is not None else {}))
                self._task = self._bar.add_task(description, total=total, completed=start, status="")
                self._bar.start()

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def compiling(self) -> None:
        """Called right before the first step runs (its time includes compiling the step)."""
        self._compile_t0 = time.perf_counter()
        if self._bar is not None:
            self._bar.update(self._task, status="compiling the train step…")
            self._bar.refresh()
        else:
            self._print(f"compiling… (the first step of {self.total} includes building the XLA program)")

    def update(self, step: int, loss: float, error: float, extra: str = "") -> None:
        # Rate over the last interval: the first one includes compilation.
        now = time.perf_counter()
        rate = (step - self._s0) / max(now - self._t0, 1e-9)
        self._t0, self._s0 = now, step
        first = self._compile_t0 is not None
        note = f"  (first steps incl. compile {now - self._compile_t0:.1f} s)" if first else ""
        self._compile_t0 = None
        text = f"loss {loss:.4f}  err {100 * error:.2f}%  {rate:.1f} steps/s{extra}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, status=text)
        elif first or step - self._last_printed >= self.print_every or step == self.total:
            self._last_printed = step
            self._print(f"step {step}/{self.total}  {text}{note}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
