"""rnlib's jitted train step vs a minimal hand-written `jax.jit` step over the same model (target: <= 1.05x).

    python benchmarks/train_step_overhead.py                 # ResNet-20, batch 128, 32x32x3, f32
    python benchmarks/train_step_overhead.py --rounds 40 --precision bf16

Both steps: the same NNX ResNet-20, softmax cross-entropy, the paper's SGD (momentum 0.9, L2 1e-4, step
schedule), BatchNorm statistics updated, state donated. The hand-written step is the textbook one (nnx.merge inside
jax.value_and_grad, optax update) with nothing else; rnlib's adds what `fit` relies on (step counter, first
non-finite step, float32 loss, error metric). The two run interleaved round-robin, each on its own state, so load
drift on a shared machine hits both alike; the figure is the ratio of median step times in this one run. A third
line times rnlib's step with the on-device augmentation (pad/crop/flip) that `fit` uses for CIFAR, for reference.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rnlib import models
from rnlib.train import Augment, create_train_state, init_module, make_optimizer, make_schedule, make_train_step


def hand_written_step(graphdef, tx, bf16: bool):
    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, stats, opt_state, x, y):
        def loss_fn(p):
            if bf16:  # compute in bf16 from float32 master params, as rnlib's --precision bf16 does
                p, x_ = jax.tree.map(lambda a: a.astype(jnp.bfloat16), p), x.astype(jnp.bfloat16)
            else:
                x_ = x
            model = nnx.merge(graphdef, p, stats)
            logits = model(x_).astype(jnp.float32)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            new_stats = nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2])
            return loss, jax.tree.map(lambda n, o: n.astype(o.dtype), new_stats, stats)

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    return step


def xla_cost(compiled) -> dict[str, float]:
    """XLA's static estimate for one call: flops and bytes accessed (empty where the backend gives none)."""
    try:
        c = compiled.cost_analysis()
        c = c[0] if isinstance(c, (list, tuple)) else c
        return {k: float(c[k]) for k in ("flops", "bytes accessed") if k in c}
    except Exception:
        return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--precision", default="f32", choices=("f32", "bf16"))
    ap.add_argument("--rounds", type=int, default=20, help="timed calls per candidate (after 3 warm-up calls)")
    ap.add_argument("--no-augment-line", action="store_true")
    args = ap.parse_args()

    kw = {"scan": False} if jax.default_backend() == "cpu" else {}  # as fit() does on CPU
    model = init_module(lambda r: models.build(args.model, 10, r, **kw), seed=0)
    tx = make_optimizer("sgd", make_schedule("paper", 64000, 0.1))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch_size, args.image, args.image, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, args.batch_size), jnp.int32)
    batch = {"image": x, "label": y}

    # candidates: name -> [advance(state) -> state, what to block on, state]
    graphdef = create_train_state(model, tx, seed=0).graphdef
    hand = hand_written_step(graphdef, tx, args.precision == "bf16")
    # Compile each once, ahead of time, and keep XLA's own cost estimate: a noise-free view of the extra work.
    cands, cost = {}, {}
    s0 = create_train_state(model, tx, 0)
    rn = make_train_step(args.precision).lower(s0, batch).compile()
    cands["rnlib"] = [lambda s: rn(s, batch)[0], lambda s: s.step, s0]
    h0 = create_train_state(model, tx, 0)
    h0 = (h0.params, h0.model_state, h0.opt_state)
    hc = hand.lower(*h0, x, y).compile()
    cands["hand-written"] = [lambda s: hc(*s, x, y)[:3], lambda s: s[0], h0]
    cost["rnlib"], cost["hand-written"] = xla_cost(rn), xla_cost(hc)
    if not args.no_augment_line:
        sa = create_train_state(model, tx, 0)
        ra = make_train_step(args.precision, Augment(pad=4, flip=True)).lower(sa, batch).compile()
        cands["rnlib+augment"] = [lambda s: ra(s, batch)[0], lambda s: s.step, sa]
        cost["rnlib+augment"] = xla_cost(ra)

    for name, c in cands.items():
        t0 = time.perf_counter()
        for _ in range(3):
            c[2] = c[0](c[2])
        jax.block_until_ready(c[1](c[2]))
        print(f"{name:14s} 3 warm-up steps: {time.perf_counter() - t0:.1f}s", flush=True)
    times: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(args.rounds):
        for name, c in cands.items():
            t0 = time.perf_counter()
            c[2] = c[0](c[2])
            jax.block_until_ready(c[1](c[2]))
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    dev = jax.devices()[0]
    print(f"\n{args.model}, batch {args.batch_size}, {args.image}x{args.image}x3, {args.precision}, "
          f"{dev.platform}:{dev.device_kind}, jax {jax.__version__}, {args.rounds} interleaved rounds")
    mins = {k: min(v) for k, v in times.items()}
    for k, v in med.items():
        q1, q3 = np.percentile(times[k], [25, 75])
        xc = "  ".join(f"{n} {c:.4g}" for n, c in cost.get(k, {}).items())
        print(f"  {k:14s} median {v * 1e3:9.2f} ms/step  min {mins[k] * 1e3:9.2f}  (IQR {q1 * 1e3:.2f}-{q3 * 1e3:.2f})"
              f"  XLA estimate: {xc or 'n/a'}")
    ref = "hand-written"
    for k in [c for c in med if c != ref]:
        line = f"  ratio {k} / {ref}: median {med[k] / med[ref]:.3f}, min {mins[k] / mins[ref]:.3f}"
        for n in ("flops", "bytes accessed"):
            if n in cost.get(k, {}) and cost[ref].get(n):
                line += f", XLA {n} {cost[k][n] / cost[ref][n]:.4f}"
        print(line + ("  (target <= 1.05)" if k == "rnlib" else ""))


if __name__ == "__main__":
    main()
