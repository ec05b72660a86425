"""A unit of benchmark work: a label for the progress bar and a callable returning records."""
from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Task:
    label: str
    fn: Callable[[], list[dict]]

    def run(self) -> list[dict]:
        return self.fn()
