"""Compile suite: seconds to lower + compile one ResNet train step, and the step's time, vs depth, scanned vs unrolled.

rnlib's ResNets run each stage's identical blocks under ``lax.scan`` (``scan=True``, the default), so the traced
program, and the compile time, should stay flat with depth; ``scan=False`` unrolls every block. Unrolled depths are
skipped once the compile time extrapolated linearly from the previous depth exceeds the budget (a record with a
``note`` says so), and the step is timed only while the extrapolated step time stays within its budget. The step runs
at a small batch (8 on CPU): compile time barely depends on it and the step time is a relative figure.
Records: name "resnetN", impl "rnlib_scan" | "rnlib_unrolled", pass "fwd+bwd", compile_s, depth, time_s (or None).
"""
from __future__ import annotations

import functools

import jax.numpy as jnp

from benchmarks import harness
from benchmarks.suites import train
from benchmarks.suites.tasks import Task

DEPTHS = (20, 56, 110, 1202)


def measure_depth(depth: int, scan: bool, batch_size: int, timing: dict, history: dict, compile_budget_s: float,
                  step_budget_s: float) -> list[dict]:
    """One record for (depth, scan); ``history`` carries the last measured (depth, compile_s, step_s) per mode."""
    impl = "rnlib_scan" if scan else "rnlib_unrolled"
    shape = (batch_size, 32, 32, 3)
    base = dict(depth=depth, family="resnet", batch=batch_size, scan=scan)
    last = history.get(impl)
    if last and not scan and last[1] * depth / last[0] > compile_budget_s:
        note = f"skipped: predicted compile {last[1] * depth / last[0]:.0f} s > budget {compile_budget_s:.0f} s"
        return [harness.make_record("compile", f"resnet{depth}", impl, shape, jnp.float32, "fwd+bwd", None,
                                    compile_s=None, note=note, **base)]
    try:
        call, sync, compile_s, params = train.rnlib_resnet(depth, train.cifar_batch(batch_size), scan=scan)
    except Exception as e:  # noqa: BLE001 -- record the failure, keep the suite going
        return [harness.make_record("compile", f"resnet{depth}", impl, shape, jnp.float32, "fwd+bwd", None,
                                    compile_s=None, note=f"error: {type(e).__name__}: {str(e)[:200]}", **base)]
    step_s, note = None, None
    predicted = last[2] * depth / last[0] if last and last[2] else 0.0
    if predicted <= step_budget_s:
        step_s = harness.time_call(call, sync=sync, **timing)
    else:
        note = f"step not timed: predicted {predicted:.0f} s > budget {step_budget_s:.0f} s"
    history[impl] = (depth, compile_s, step_s)
    extra = {"note": note} if note else {}
    return [harness.make_record("compile", f"resnet{depth}", impl, shape, jnp.float32, "fwd+bwd", step_s,
                                compile_s=compile_s, params=params, **base, **extra)]


def plan_compile(depths: tuple[int, ...] = DEPTHS, modes: tuple[bool, ...] = (True, False), batch_size: int = 8,
                 timing: dict | None = None, compile_budget_s: float = 180.0,
                 step_budget_s: float = 30.0) -> list[Task]:
    history: dict[str, tuple] = {}
    timing = timing or {"warmup": 1, "min_runs": 3, "max_runs": 10, "target_s": 2.0}
    return [Task(f"resnet{d} {'scan' if s else 'unrolled'}",
                 functools.partial(measure_depth, d, s, batch_size, timing, history, compile_budget_s,
                                   step_budget_s))
            for s in modes for d in depths]


def default_plan(quick: bool) -> list[Task]:
    accel = harness.platform() != "cpu"
    if quick and not accel:
        return plan_compile(batch_size=8, timing={"warmup": 1, "min_runs": 1, "max_runs": 1, "target_s": 0.0},
                            compile_budget_s=60.0, step_budget_s=8.0)
    if quick:
        return plan_compile(batch_size=128, compile_budget_s=60.0, step_budget_s=10.0)
    return plan_compile(batch_size=128 if accel else 8, compile_budget_s=240.0, step_budget_s=60.0)
