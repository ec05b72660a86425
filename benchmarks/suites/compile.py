"""Train suite (placeholder until models land)."""
from benchmarks.suites.tasks import Task


def default_plan(quick: bool) -> list[Task]:
    return []
