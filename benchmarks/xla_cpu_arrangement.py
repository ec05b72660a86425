"""impl="xla" on CPU: the arranged norm (rnlib.ops.cpu_sums) against the plain jnp expressions, side by side.

    python benchmarks/xla_cpu_arrangement.py [--shapes 4096x1024,256x4096,...] [--dtypes float32,bfloat16]
                                             [--ops layer_norm,rms_norm]

``rnlib.ops.norm_xla`` switches to the arrangement at ``ARRANGE_MIN_SIZE`` elements;
this script measured where that pays. For each op, shape and dtype it compiles the norm (impl="xla") twice, once
with the arrangement forced on and once forced off, and times forward and forward+backward of both round-robin
with a jitted ``x + 1``. It prints arranged/plain time ratios (below 1: the arrangement is faster) and whether
the default picks the arrangement for that shape.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import harness  # noqa: E402
from rnlib import ops  # noqa: E402
from rnlib.ops import norm_xla  # noqa: E402

SHAPES = "4096x1024,8192x4096,4096x256,16x65536,4096x1000,1024x1024,64x1024,256x128,1024x64,32x1024,64x256"


@contextlib.contextmanager
def arrangement(on: bool):
    """Force the CPU arrangement on or off while functions are traced (thresholds are read at trace time)."""
    saved = norm_xla.ARRANGE_MIN_SIZE
    norm_xla.ARRANGE_MIN_SIZE = 1 if on else 2**62
    try:
        yield
    finally:
        norm_xla.ARRANGE_MIN_SIZE = saved


def compiled_pair(x: jax.Array, cot: jax.Array, params: tuple, on: bool, op: str = "layer_norm") -> tuple:
    """(forward, forward+backward) of the norm ``op`` (impl="xla"; params: (scale, bias) for layer_norm, (scale,)
    for rms_norm), compiled with the arrangement on or off."""
    def fn(p, x):
        return getattr(ops, op)(x, *p, impl="xla", platform="cpu")

    def fwd_bwd(p, x, cot):
        out, vjp = jax.vjp(fn, p, x)
        return out, vjp(cot)
    with arrangement(on):
        return (jax.jit(fn).lower(params, x).compile(), jax.jit(fwd_bwd).lower(params, x, cot).compile())


def compare(rows: int, width: int, dtype: str, target_s: float, op: str = "layer_norm") -> dict:
    key = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(key[0], (rows, width), jnp.float32).astype(dtype)
    cot = jax.random.normal(key[1], (rows, width), jnp.float32).astype(dtype)
    params = (jnp.ones((width,)), jnp.zeros((width,)))[:2 if op == "layer_norm" else 1]
    sync = jax.block_until_ready
    cands = {"copy": (harness.plus_one(), (x,), sync)}
    for on in (True, False):
        fwd, fb = compiled_pair(x, cot, params, on, op)
        cands[(on, "fwd")] = (fwd, (params, x), sync)
        cands[(on, "fwd+bwd")] = (fb, (params, x, cot), sync)
    t = harness.time_interleaved(cands, target_s=target_s, min_runs=7)
    return {"op": op, "shape": f"{rows}x{width}", "dtype": dtype, "default_arranged": norm_xla._arranged("cpu", (rows, width)),
            "fwd arranged/plain": t[(True, "fwd")] / t[(False, "fwd")],
            "fwd+bwd arranged/plain": t[(True, "fwd+bwd")] / t[(False, "fwd+bwd")],
            "plain fwd+bwd/copy": t[(False, "fwd+bwd")] / t["copy"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--ops", default="layer_norm,rms_norm")
    ap.add_argument("--target-s", type=float, default=0.3, help="timed seconds per candidate")
    args = ap.parse_args(argv)
    harness.keep_freed_memory_mapped()
    print(f"{'op':>10} {'shape':>10} {'dtype':>9} {'default':>8} {'fwd arr/plain':>14} {'fwd+bwd arr/plain':>18} "
          f"{'plain fwd+bwd/copy':>19}")
    for op, shape, dt in itertools.product(args.ops.split(","), args.shapes.split(","), args.dtypes.split(",")):
        rows, width = (int(v) for v in shape.split("x"))
        r = compare(rows, width, dt, args.target_s, op)
        print(f"{op:>10} {r['shape']:>10} {dt:>9} {'arranged' if r['default_arranged'] else 'plain':>8} "
              f"{r['fwd arranged/plain']:14.2f} {r['fwd+bwd arranged/plain']:18.2f} "
              f"{r['plain fwd+bwd/copy']:19.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
