"""Timing, the copy-bandwidth yardstick and benchmark records.

Every figure is a ratio measured in the same run: an op that must move ``B`` bytes in ``t`` seconds reaches
``B / t`` bytes/s, and ``frac_of_copy`` divides that by the bandwidth of a jitted ``x + 1`` on the same shape and
dtype (which reads and writes ``|x|``). Absolute times only mean something on an accelerator; on a shared CPU compare
records of one run with each other.
"""
from __future__ import annotations

import ctypes
import functools
import math
import os
import statistics
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PASSES = ("fwd", "bwd", "fwd+bwd")
RECORD_KEYS = ("suite", "name", "impl", "shape", "dtype", "pass", "time_s", "gbps", "frac_of_copy", "device",
               "jax_version")

# Arrays of |x| each op must read or write at the least (x, residual, y, new residual, dy, dh, dx; statistics and
# parameters are O(rows + width) and ignored). Layer and RMS norm: fwd reads x and writes y; bwd reads x (saved) and
# dy and writes dx. add_norm: fwd reads x and residual and writes h = x + residual and y; bwd reads dy, the
# residual-stream cotangent and h and writes dx (the residual's cotangent is the same array).
ARRAYS_MOVED = {
    "layer_norm": {"fwd": 2, "bwd": 3, "fwd+bwd": 5},
    "rms_norm": {"fwd": 2, "bwd": 3, "fwd+bwd": 5},
    "add_norm": {"fwd": 4, "bwd": 4, "fwd+bwd": 8},
}


def device_name() -> str:
    """A short name for the default device, e.g. "cpu (2 cores)" or "NVIDIA H100 80GB HBM3"."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores)"
    return str(getattr(dev, "device_kind", dev.platform))


def platform() -> str:
    """The default backend's platform: "cpu", "gpu" or "tpu"."""
    return jax.devices()[0].platform


def make_record(suite: str, name: str, impl: str, shape: Sequence[int], dtype: Any, pass_: str, time_s: float | None,
                *, nbytes: float | None = None, copy_gbps: float | None = None, **extra: Any) -> dict:
    """One benchmark record with the common schema; ``extra`` adds suite-specific keys (images_per_s, compile_s...).

    ``gbps`` = nbytes / time_s / 1e9 and ``frac_of_copy`` = gbps / copy_gbps when both are known, else None.
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass_ must be one of {PASSES}, got {pass_!r}")
    gbps = nbytes / time_s / 1e9 if nbytes and time_s else None
    frac = gbps / copy_gbps if gbps and copy_gbps else None
    rec = {"suite": suite, "name": name, "impl": impl, "shape": [int(s) for s in shape],
           "dtype": np.dtype(dtype).name if dtype is not None else None, "pass": pass_, "time_s": time_s,
           "gbps": gbps, "frac_of_copy": frac, "device": device_name(), "jax_version": jax.__version__}
    if copy_gbps:
        rec["copy_gbps"] = copy_gbps
    rec.update(extra)
    return rec


def time_call(fn: Callable[..., Any], *args: Any, warmup: int = 2, min_runs: int = 5, max_runs: int = 200,
              target_s: float = 0.3, sync: Callable[[Any], Any] = jax.block_until_ready) -> float:
    """Median wall time in seconds of ``sync(fn(*args))`` over several runs, after ``warmup`` calls.

    ``fn`` should already be compiled (the warm-up calls compile a ``jax.jit`` function on first use). The run count
    adapts so the timed loop lasts about ``target_s`` (between ``min_runs`` and ``max_runs``).
    """
    for _ in range(max(warmup, 1)):
        sync(fn(*args))
    t0 = time.perf_counter()
    sync(fn(*args))
    first = time.perf_counter() - t0
    runs = int(min(max_runs, max(min_runs, target_s / max(first, 1e-9))))
    times = [first]
    for _ in range(runs - 1):
        t0 = time.perf_counter()
        sync(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


Timed = tuple  # (fn, args, sync): call ``sync(fn(*args))``


def time_interleaved(cands: dict[Any, Timed], *, warmup: int = 2, min_runs: int = 5, max_runs: int = 200,
                     target_s: float = 0.3) -> dict[Any, float]:
    """Median seconds per candidate, timed round-robin (one call of each per round).

    On a shared machine the load drifts; interleaving exposes every candidate to the same drift, so the ratios
    between them (what the benchmarks report) stay meaningful. Runs: enough rounds for ``target_s`` per candidate on
    average, clamped to [min_runs, max_runs]. A candidate that raises is dropped (its entry is missing).
    """
    times: dict[Any, list[float]] = {}
    for key, (fn, args, sync) in list(cands.items()):
        for _ in range(max(warmup, 1)):
            sync(fn(*args))
        t0 = time.perf_counter()
        sync(fn(*args))
        times[key] = [time.perf_counter() - t0]
    if not times:
        return {}
    per_round = sum(t[0] for t in times.values())
    rounds = int(min(max_runs, max(min_runs, target_s * len(times) / max(per_round, 1e-9))))
    for _ in range(rounds - 1):
        for key, (fn, args, sync) in cands.items():
            t0 = time.perf_counter()
            sync(fn(*args))
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def compile_seconds(jitted: Any, *args: Any) -> tuple[Any, float]:
    """Lower and compile ``jitted`` for ``args``; returns (compiled executable, seconds for lower + compile)."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


@functools.lru_cache(maxsize=None)
def keep_freed_memory_mapped() -> bool:
    """Ask glibc to serve allocations up to 32 MiB from its heap and to keep freed memory mapped.

    Without this, whether an op's output lands in freshly mapped pages (a page fault per 4 KiB, which can
    double the time of a memory-bound op) depends on which candidate freed what just before, so the same
    op's time swung 1-4x between rounds of one interleaved run on our CPUs. It applies to every candidate
    alike (XLA's and torch's allocations both go through glibc). Outputs above 32 MiB are always freshly
    mapped (glibc's ceiling). Returns False where it does not apply (not glibc). Called once per process.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


@functools.lru_cache(maxsize=None)
def plus_one() -> Callable[[jax.Array], jax.Array]:
    return jax.jit(lambda x: x + jnp.asarray(1, x.dtype))


def copy_time(x: jax.Array, **timing: Any) -> float:
    """Median seconds of a jitted ``x + 1`` (reads and writes |x|): the bandwidth yardstick for ``x``'s shape."""
    return time_call(plus_one(), x, **timing)


def copy_gbps(x: jax.Array, **timing: Any) -> float:
    """Bandwidth (GB/s) of a jitted ``x + 1``, counting one read and one write of ``x``."""
    return 2 * x.size * x.dtype.itemsize / copy_time(x, **timing) / 1e9


def random_normal(key: jax.Array, shape: Sequence[int], dtype: Any, *, mean: float = 0.0) -> jax.Array:
    """Standard-normal test data (never all zeros) in ``dtype``, drawn in float32."""
    return (jax.random.normal(key, tuple(shape), jnp.float32) + mean).astype(dtype)


def geomean(values: Iterable[float]) -> float:
    vals = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")
