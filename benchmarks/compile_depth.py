"""Compile time versus depth for the CIFAR ResNets: each stage's identical blocks run under lax.scan, so tracing
and compiling ResNet-1202 should cost about as much as ResNet-20 (target: ratio <= 2).

    python benchmarks/compile_depth.py                       # ResNet-20 vs ResNet-1202, train-mode forward
    python benchmarks/compile_depth.py --depths 20 110 1202 --grad --repeats 3 --unrolled
    python benchmarks/compile_depth.py --depths 20 --unrolled --runtime   # step time, scan vs unrolled

For each depth it times ``jax.jit(f).lower(...).compile()`` (trace + lower + XLA compile) of the forward pass
``(params, batch_stats, x) -> (logits, new batch_stats)`` in training mode (and, with --grad, of the gradient of a
cross-entropy loss), each repeat with a fresh function so that no cache is hit. Depths are interleaved across
repeats and the median is reported; ratios are against the first depth, measured in the same run. --runtime also
times the compiled gradient step (median of 5, after a warm-up) with --runtime-batch 32x32 images.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rnlib.models import cifar_resnet


def compile_seconds(model: nnx.Module, x: jax.Array, grad: bool) -> float:
    """Wall-clock seconds to trace, lower and compile one training-mode step of ``model`` on ``x``."""
    graphdef, state = nnx.split(model)
    labels = jnp.zeros((x.shape[0],), jnp.int32)

    def step(state, x):  # functional NNX: merge inside the traced function, return the updated state
        m = nnx.merge(graphdef, state)
        if not grad:
            return m(x), nnx.state(m)

        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), labels).mean()

        return nnx.grad(loss)(m), nnx.state(m)

    t0 = time.perf_counter()
    jax.jit(step).lower(state, x).compile()
    return time.perf_counter() - t0


def step_seconds(model: nnx.Module, x: jax.Array, runs: int = 5) -> float:
    """Median wall-clock seconds of one compiled training-mode gradient step (after a warm-up call)."""
    labels = jnp.zeros((x.shape[0],), jnp.int32)
    step = nnx.jit(nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), labels).mean()))
    jax.block_until_ready(step(model))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(step(model))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[20, 1202])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--grad", action="store_true", help="also time the gradient (forward + backward)")
    ap.add_argument("--unrolled", action="store_true", help="also time scan=False (unrolled) for contrast")
    ap.add_argument("--runtime", action="store_true", help="also time the compiled gradient step")
    ap.add_argument("--runtime-batch", type=int, default=16)
    args = ap.parse_args()

    variants = [("scan", True)] + ([("unrolled", False)] if args.unrolled else [])
    passes = ["fwd"] + (["grad"] if args.grad else [])
    x = jax.random.normal(jax.random.key(0), (args.batch, 32, 32, 3), jnp.float32)
    models = {(d, v): cifar_resnet(d, scan=s, rngs=nnx.Rngs(0)) for d in args.depths for v, s in variants}
    times: dict[tuple, list[float]] = {}
    for _ in range(args.repeats):  # interleave depths so that machine load affects all alike
        for (d, v), m in models.items():
            for p in passes:
                times.setdefault((d, v, p), []).append(compile_seconds(m, x, p == "grad"))

    print(f"device: {jax.devices()[0].platform}, jax {jax.__version__}, batch {args.batch}, "
          f"median of {args.repeats}")
    base = args.depths[0]
    for v, _ in variants:
        for p in passes:
            ref = statistics.median(times[(base, "scan", p)])
            for d in args.depths:
                t = statistics.median(times[(d, v, p)])
                print(f"resnet{d:<5d} {v:8s} {p:4s} compile {t:7.3f} s   ratio vs resnet{base} (scan) {t / ref:5.2f}")
    if args.runtime:
        xr = jax.random.normal(jax.random.key(1), (args.runtime_batch, 32, 32, 3), jnp.float32)
        step = {(d, v): step_seconds(m, xr) for (d, v), m in models.items()}
        for d in args.depths:
            ref = step[(d, "scan")]
            for v, _ in variants:
                print(f"resnet{d:<5d} {v:8s} grad step {step[(d, v)]:7.3f} s (batch {args.runtime_batch}) "
                      f"ratio vs scan {step[(d, v)] / ref:5.2f}")


if __name__ == "__main__":
    main()
