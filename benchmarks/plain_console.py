"""Minimal stand-ins for the few rich classes ``python -m benchmarks`` uses, for machines without rich (e.g. a bare
GPU image with only jax/flax): one line per finished task instead of a live bar, and fixed-width text tables."""
from __future__ import annotations

import sys
import time
from typing import Any


def column(*_: Any, **__: Any) -> None:
    return None


class Console:
    def __init__(self, width: int | None = None):
        del width

    def print(self, obj: Any) -> None:
        print(obj.render() if isinstance(obj, Table) else obj, flush=True)


class Progress:
    def __init__(self, *_: Any, console: Console | None = None):
        self._tasks: dict[int, dict] = {}
        self._t0 = time.perf_counter()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *_: Any) -> None:
        return None

    def add_task(self, description: str, total: int, **fields: Any) -> int:
        self._tasks[len(self._tasks)] = {"description": description, "total": total, "done": 0, **fields}
        return len(self._tasks) - 1

    def update(self, task_id: int, **fields: Any) -> None:
        self._tasks[task_id].update(fields)

    def advance(self, task_id: int) -> None:
        t = self._tasks[task_id]
        t["done"] += 1
        if not sys.stdout.isatty():
            return  # __main__ prints one line per task itself when the output is not a terminal
        print(f"[{t['description']} {t['done']}/{t['total']} {time.perf_counter() - self._t0:6.0f} s] "
              f"{t.get('current', '')}", flush=True)


class Table:
    def __init__(self, title: str = ""):
        self.title, self.header, self.rows = title, [], []

    def add_column(self, name: str, **_: Any) -> None:
        self.header.append(name)

    def add_row(self, *cells: str) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        widths = [max(len(r[i]) for r in [self.header] + self.rows) for i in range(len(self.header))]
        line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
        return "\n".join([self.title, line(self.header)] + [line(r) for r in self.rows])
