"""Shared pieces of the experiments: CLI flags, a small jit training loop for array tasks, result files.

Image classification (experiment 1) trains with `rnlib.train.fit`; the loop here is for the tasks rnlib.train does
not cover (sequence models, regression on synthetic data): any NNX model, any loss, optax.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
import optax
from flax import nnx

RESULTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "experiments")


def base_parser(description: str, *, steps: int, seeds: int = 1) -> argparse.ArgumentParser:
    """Flags every experiment accepts: --steps --seeds --out --full --quiet (plus its own)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--steps", type=int, default=steps, help=f"training steps per run (default {steps})")
    p.add_argument("--seeds", type=int, default=seeds, help=f"seeds per configuration (default {seeds})")
    p.add_argument("--out", default=RESULTS_DIR, help="folder for the JSON + PNG results")
    p.add_argument("--full", action="store_true", help="paper-scale settings (an accelerator is advised)")
    p.add_argument("--quiet", action="store_true")
    return p


def run_info(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Where and how a result was measured (stored next to every result)."""
    dev = jax.devices()[0]
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m " + ("benchmarks." + sys.argv[0].rsplit("benchmarks/", 1)[-1].replace("/", ".")
                                   .removesuffix(".py") if "benchmarks/" in sys.argv[0] else sys.argv[0])
                   + " " + " ".join(sys.argv[1:]),
        "args": vars(args) if args is not None else None,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "host": platform.machine(),
    }


def write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False, default=float)
        f.write("\n")


def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fit_arrays(
    model: nnx.Module,
    loss_fn: Callable[[nnx.Module, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]],
    batch_fn: Callable[[int], dict[str, np.ndarray]],
    *,
    steps: int,
    tx: optax.GradientTransformation,
    log_every: int = 25,
    eval_fn: Callable[[nnx.Module], dict[str, float]] | None = None,
    eval_every: int = 0,
) -> tuple[nnx.Module, list[dict[str, float]]]:
    """Train ``model`` in place for ``steps`` jit-compiled optax steps; return it and the logged history.

    ``loss_fn(model, batch) -> (loss, metrics)``; ``batch_fn(step) -> batch`` (NumPy arrays, deterministic in
    step). History rows: ``{"step", "loss", <metrics averaged over the last log_every steps>, <eval_fn(model)>}``.
    A non-finite loss raises ``FloatingPointError`` naming the step.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, rest, opt_state, batch):
        def f(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            loss, metrics = loss_fn(m, batch)
            return loss, (metrics, nnx.state(m, nnx.Not(nnx.Param)))

        (loss, (metrics, rest)), grads = jax.value_and_grad(f, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, {"loss": loss, **metrics}

    history: list[dict[str, float]] = []
    pending = []
    for i in range(1, steps + 1):
        params, rest, opt_state, m = step(params, rest, opt_state, batch_fn(i - 1))
        pending.append(m)
        last = i == steps
        if i % log_every == 0 or last:
            ms = jax.device_get(pending)
            pending = []
            row = {"step": i, **{k: float(np.mean([x[k] for x in ms])) for k in ms[0]}}
            if not np.isfinite(row["loss"]):
                raise FloatingPointError(f"fit_arrays: non-finite loss by step {i}")
            if eval_fn is not None and eval_every and (i % eval_every == 0 or last):
                nnx.update(model, params, rest)
                row.update(eval_fn(model))
            history.append(row)
    nnx.update(model, params, rest)
    return model, history


def batches_from(data: dict[str, np.ndarray], batch_size: int, seed: int) -> Callable[[int], dict[str, np.ndarray]]:
    """``batch_fn(step)`` drawing epoch-wise shuffled minibatches from a dict of equal-length arrays."""
    n = len(next(iter(data.values())))
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} examples")
    perms: dict[int, np.ndarray] = {}

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        epoch, pos = divmod(step, per_epoch)
        if epoch not in perms:
            perms.clear()
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        idx = perms[epoch][pos * batch_size:(pos + 1) * batch_size]
        return {k: v[idx] for k, v in data.items()}

    return batch_fn
