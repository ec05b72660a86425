"""Norms suite: layer_norm, rms_norm and add_norm, forward / backward / forward+backward, per implementation.

Each task times one (op, width, dtype) for every implementation and pass next to a jitted ``x + 1`` on the same
shape (the copy yardstick), round-robin in one loop, so every record's ``frac_of_copy`` comes from the same run. ``run_norms`` is the reusable entry point (the GPU script calls it
with its own widths, dtypes and implementations).

Implementations (names used in records):
  rnlib_xla      rnlib.ops with impl="xla" (hand-written VJP)
  rnlib_pallas   rnlib.ops with impl="pallas" (GPU/TPU only: interpret mode on CPU is not timed)
  rnlib_native   rnlib.ops with impl="native" (the C++ CPU kernel; CPU only, when it is built)
  jnp_reference  benchmarks/reference/norms.py under autodiff
  flax_nnx       flax.nnx.LayerNorm / RMSNorm (add_norm: x + residual, then the norm)
  flax_linen     flax.linen.LayerNorm / RMSNorm (same)
  torch          torch.nn.functional.layer_norm / rms_norm with autograd, when torch is importable
  pallas_gpu_ln  jax.experimental.pallas.ops.gpu.layer_norm (layer_norm on GPU only)
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from benchmarks import harness
from benchmarks.reference import norms as ref
from benchmarks.suites import norms_torch
from benchmarks.suites.tasks import Task

OPS = ("layer_norm", "rms_norm", "add_norm")
IMPLS = ("rnlib_xla", "rnlib_pallas", "rnlib_native", "jnp_reference", "flax_nnx", "flax_linen", "torch", "pallas_gpu_ln")
EPS = 1e-6

# Function of (params, inputs) -> output(s); inputs = (x,) or (x, residual).
NormFn = Callable[[Any, tuple], Any]


def _flax_norm(api: str, op: str, width: int, dtype: Any) -> tuple[NormFn, Any]:
    import flax.linen as linen
    from flax import nnx

    rms = op == "rms_norm"
    if api == "nnx":
        cls = nnx.RMSNorm if rms else nnx.LayerNorm
        graphdef, params = nnx.split(cls(width, epsilon=EPS, dtype=dtype, rngs=nnx.Rngs(0)))
        apply = lambda p, h: nnx.merge(graphdef, p)(h)  # noqa: E731
    else:
        mod = (linen.RMSNorm if rms else linen.LayerNorm)(epsilon=EPS, dtype=dtype)
        params = mod.init(jax.random.key(0), jnp.zeros((1, width), dtype))["params"]
        apply = lambda p, h: mod.apply({"params": p}, h)  # noqa: E731
    if op == "add_norm":
        def fn(p, ins):
            h = ins[0] + ins[1]
            return apply(p, h), h
        return fn, params
    return (lambda p, ins: apply(p, ins[0])), params


def _rnlib_norm(impl: str, op: str, width: int) -> tuple[NormFn, Any]:
    from rnlib import ops

    params = {"scale": 1.0 + 0.1 * jax.random.normal(jax.random.key(1), (width,), jnp.float32),
              "bias": 0.1 * jax.random.normal(jax.random.key(2), (width,), jnp.float32)}
    if op == "layer_norm":
        return (lambda p, ins: ops.layer_norm(ins[0], p["scale"], p["bias"], epsilon=EPS, impl=impl)), params
    if op == "rms_norm":
        del params["bias"]
        return (lambda p, ins: ops.rms_norm(ins[0], p["scale"], epsilon=EPS, impl=impl)), params
    return (lambda p, ins: ops.add_norm(ins[0], ins[1], p["scale"], p["bias"], epsilon=EPS, impl=impl)), params


def _reference_norm(op: str, width: int) -> tuple[NormFn, Any]:
    params = {"scale": 1.0 + 0.1 * jax.random.normal(jax.random.key(1), (width,), jnp.float32),
              "bias": 0.1 * jax.random.normal(jax.random.key(2), (width,), jnp.float32)}
    if op == "layer_norm":
        return (lambda p, ins: ref.layer_norm(ins[0], p["scale"], p["bias"], epsilon=EPS)), params
    if op == "rms_norm":
        del params["bias"]
        return (lambda p, ins: ref.rms_norm(ins[0], p["scale"], epsilon=EPS)), params
    return (lambda p, ins: ref.add_norm(ins[0], ins[1], p["scale"], p["bias"], epsilon=EPS)), params


def _pallas_gpu_ln(width: int) -> tuple[NormFn, Any]:
    from jax.experimental.pallas.ops.gpu import layer_norm as pgl

    params = {"scale": jnp.ones((width,), jnp.float32), "bias": jnp.zeros((width,), jnp.float32)}

    def fn(p, ins):
        x = ins[0]  # the op expects (batch, seq, features)
        y = pgl.layer_norm(x[None], p["scale"].astype(x.dtype), p["bias"].astype(x.dtype), eps=EPS)
        return y[0]
    return fn, params


def applicable(impl: str, op: str, plat: str) -> bool:
    """Whether ``impl`` is timed for ``op`` on platform ``plat`` (pallas: accelerators only, never interpret)."""
    if impl == "rnlib_pallas":
        return plat in ("gpu", "tpu")
    if impl == "rnlib_native":
        from rnlib import ops
        return plat == "cpu" and not ops.backend_unavailable("native")
    if impl == "pallas_gpu_ln":
        return plat == "gpu" and op == "layer_norm"
    if impl == "torch":
        return norms_torch.available()
    return impl in IMPLS


def build(impl: str, op: str, width: int, dtype: Any) -> tuple[NormFn, Any]:
    """(fn(params, inputs), params) for a JAX implementation."""
    if impl in ("rnlib_xla", "rnlib_pallas", "rnlib_native"):
        return _rnlib_norm(impl.split("_")[1], op, width)
    if impl == "jnp_reference":
        return _reference_norm(op, width)
    if impl in ("flax_nnx", "flax_linen"):
        return _flax_norm(impl.split("_")[1], op, width, dtype)
    if impl == "pallas_gpu_ln":
        return _pallas_gpu_ln(width)
    raise ValueError(f"unknown JAX implementation {impl!r}")


def pass_fns(fn: NormFn) -> dict[str, Callable]:
    """Jitted callables for each pass. bwd takes the VJP closure (its residuals computed by a separate jit)."""
    fwd = jax.jit(fn)
    residuals = jax.jit(lambda p, ins: jax.vjp(fn, p, ins)[1])
    bwd = jax.jit(lambda vjp_fn, cot: vjp_fn(cot))

    @jax.jit
    def fwd_bwd(p, ins, cot):
        out, vjp_fn = jax.vjp(fn, p, ins)
        return out, vjp_fn(cot)
    return {"fwd": fwd, "residuals": residuals, "bwd": bwd, "fwd+bwd": fwd_bwd}


def _jax_candidates(impl: str, op: str, ins: tuple, cot: Any, passes: Sequence[str]) -> dict[str, tuple]:
    fn, params = build(impl, op, ins[0].shape[-1], ins[0].dtype)
    fns = pass_fns(fn)
    sync = jax.block_until_ready
    out = {}
    if "fwd" in passes:
        out["fwd"] = (fns["fwd"], (params, ins), sync)
    if "bwd" in passes:
        out["bwd"] = (fns["bwd"], (fns["residuals"](params, ins), cot), sync)
    if "fwd+bwd" in passes:
        out["fwd+bwd"] = (fns["fwd+bwd"], (params, ins, cot), sync)
    return out


def _first_line(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:200] if msg else ''}"


def measure(op: str, rows: int, width: int, dtype: Any, impls: Sequence[str], passes: Sequence[str] = harness.PASSES,
            timing: dict | None = None, suite: str = "norms") -> list[dict]:
    """Records for one (op, shape, dtype): every applicable impl x pass, with the copy ratio from this run.

    All candidates (and the copy) are compiled and warmed up first, then timed round-robin (harness.time_interleaved)
    so load drift on a shared machine hits them alike. An implementation that fails to build or run (e.g. a shape a
    kernel does not support) yields records with ``time_s`` None and an ``error`` message instead of stopping the
    suite.
    """
    timing = timing or {}
    dtype = jnp.dtype(dtype)
    plat = harness.platform()
    keys = jax.random.split(jax.random.key(width * 31 + rows), 4)
    x = harness.random_normal(keys[0], (rows, width), dtype, mean=0.5)
    ins = (x,) if op != "add_norm" else (x, harness.random_normal(keys[1], (rows, width), dtype))
    dy = harness.random_normal(keys[2], (rows, width), dtype)
    cot = dy if op != "add_norm" else (dy, harness.random_normal(keys[3], (rows, width), dtype))
    nbytes_x = rows * width * dtype.itemsize

    cands: dict[tuple, tuple] = {("copy", "fwd"): (harness.plus_one(), (x,), jax.block_until_ready)}
    errors: dict[str, str] = {}
    used = [i for i in impls if applicable(i, op, plat)]
    for impl in used:
        try:
            if impl == "torch":
                per_pass = norms_torch.candidates(op, ins, cot, passes, EPS)
            else:
                per_pass = _jax_candidates(impl, op, ins, cot, passes)
            for p, (fn, args, sync) in per_pass.items():
                sync(fn(*args))  # compile and check it runs before timing starts
                cands[(impl, p)] = (fn, args, sync)
        except Exception as e:  # noqa: BLE001 -- one unsupported impl/shape must not stop the suite
            errors[impl] = _first_line(e)
    times = harness.time_interleaved(cands, **timing)
    copy_s = times[("copy", "fwd")]
    cgbps = 2 * nbytes_x / copy_s / 1e9

    records = []
    for impl in used:
        for p in passes:
            extra = {"copy_time_s": copy_s}
            if impl in errors:
                extra["error"] = errors[impl]
            records.append(harness.make_record(
                suite, op, impl, (rows, width), dtype, p, times.get((impl, p)),
                nbytes=harness.ARRAYS_MOVED[op][p] * nbytes_x, copy_gbps=cgbps, **extra))
    return records


def rows_for(width: int, elements: int, min_rows: int = 8) -> int:
    """Rows so each array holds about ``elements`` elements (at least ``min_rows``)."""
    return max(min_rows, elements // width)


def plan_norms(ops: Sequence[str] = OPS, widths: Sequence[int] = (128, 1024, 8192, 65536),
               dtypes: Sequence[Any] = ("float32", "bfloat16"), impls: Sequence[str] = IMPLS,
               passes: Sequence[str] = harness.PASSES, elements: int = 1 << 22, timing: dict | None = None,
               suite: str = "norms") -> list[Task]:
    """One task per (op, width, dtype); each returns that shape's records."""
    tasks = []
    for op in ops:
        for dt in dtypes:
            for w in widths:
                r = rows_for(w, elements)
                tasks.append(Task(f"{op} {r}x{w} {jnp.dtype(dt).name}",
                                  functools.partial(measure, op, r, w, dt, tuple(impls), tuple(passes), timing,
                                                    suite)))
    return tasks


def run_norms(**kwargs: Any) -> list[dict]:
    """Run ``plan_norms(**kwargs)`` without a progress bar and return all records (for scripts and the GPU run)."""
    return [rec for task in plan_norms(**kwargs) for rec in task.run()]


def default_plan(quick: bool) -> list[Task]:
    """The norms suite as ``python -m benchmarks`` runs it: sizes by platform, trimmed by --quick."""
    accel = harness.platform() != "cpu"
    if quick:
        widths = (256, 4096, 65536) if not accel else (256, 4096, 65536, 262144)
        elements = 1 << 20 if not accel else 1 << 25
        timing = {"target_s": 0.1, "min_runs": 5}
    else:
        top = 262144 if accel else 65536
        widths = tuple(2 ** k for k in range(7, top.bit_length()))
        elements = 1 << 22 if not accel else 1 << 26
        timing = {"target_s": 0.3, "min_runs": 10}
    return plan_norms(widths=widths, elements=elements, timing=timing)


def summary_rows(records: list[dict]) -> list[tuple]:
    """(op, dtype, pass, impl, geomean frac_of_copy over widths) for the summary table."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if r.get("frac_of_copy"):
            groups.setdefault((r["name"], r["dtype"], r["pass"], r["impl"]), []).append(r["frac_of_copy"])
    return [k + (harness.geomean(v),) for k, v in sorted(groups.items())]
