"""Experiment 3: does LayerNorm throw away information a task needs? (the open critique in our source notes)

Two tasks whose label lives in a layer's per-example statistics (benchmarks/experiments/tasks.py): a running
Hi-Lo card count (grows with the number of cards summed) and the number of edges in an image. The same
encoder -> pool -> norm -> head model (stats_models.py) with no norm, LayerNorm, RMSNorm and rnlib's
StatsLayerNorm; Adam, MSE on the count; test RMSE and exact accuracy (rounded prediction == label).

    python -m benchmarks.experiments.stats_loss [--steps 1000] [--seeds 2] [--full] [--out DIR]
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.experiments import tasks
from benchmarks.experiments.runner import base_parser, batches_from, fit_arrays, log, run_info, write_json
from benchmarks.experiments.stats_models import NORMS, PoolNormNet

TASKS = ("cards", "edges", "edges_bias")  # edges_bias: the image encoder with biases (see stats_models.py)
DEFAULT_TASKS = TASKS


def make_data(task: str, seed: int, n: int) -> dict[str, np.ndarray]:
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    if task == "cards":
        d = tasks.card_counting(seed, n)
        return {"x": d["cards"], "y": d["count"]}
    d = tasks.edge_density(seed, n)
    return {"x": d["image"], "y": d["edges"]}


def loss_fn(model: nnx.Module, batch: dict[str, jax.Array]):
    pred = model(batch["x"])
    err = pred - batch["y"]
    return jnp.mean(err ** 2), {"accuracy": jnp.mean(jnp.round(pred) == batch["y"])}


def evaluate(model: PoolNormNet, data: dict[str, np.ndarray]) -> dict[str, float]:
    """Test RMSE, exact accuracy, and how well the pre-norm representation's per-example mean / log-std
    track the label (Pearson r over all examples and positions)."""
    fwd = nnx.jit(lambda m, x: (m(x), m.pooled(x)))
    preds, means, logstd = [], [], []
    for s in range(0, len(data["y"]), 500):
        p, h = fwd(model, data["x"][s:s + 500])
        preds.append(np.asarray(p))
        means.append(np.asarray(h.mean(-1)))
        logstd.append(np.asarray(jnp.log(h.std(-1) + 1e-6)))
    pred, y = np.concatenate(preds), data["y"]
    m, ls = np.concatenate(means).ravel(), np.concatenate(logstd).ravel()
    r = lambda a: float(np.corrcoef(a, y.ravel())[0, 1]) if np.std(a) > 0 else 0.0  # noqa: E731
    return {"test_rmse": float(np.sqrt(np.mean((pred - y) ** 2))), "test_accuracy": float(np.mean(np.round(pred) == y)),
            "r_label_prenorm_mean": r(m), "r_label_prenorm_logstd": r(ls)}


def run(task: str, norm: str, seed: int, steps: int, *, n_train: int, n_test: int, batch: int, lr: float,
        features: int = 32, log_every: int = 50) -> dict:
    train = make_data(task, 1000 + seed, n_train)
    test = make_data(task, 99, n_test)  # the same test set for every run
    model = PoolNormNet("cards" if task == "cards" else "edges", norm, features=features, hidden=features,
                        encoder_bias=task != "edges", rngs=nnx.Rngs(seed))
    tx = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
    t0 = time.perf_counter()
    model, hist = fit_arrays(model, loss_fn, batches_from(train, batch, seed), steps=steps, tx=tx, log_every=log_every)
    res = evaluate(model, test)
    res.update(train_loss_final=hist[-1]["loss"], wall_s=time.perf_counter() - t0,
               curve={"step": [h["step"] for h in hist], "loss": [h["loss"] for h in hist]})
    return res


def summarise(runs: list[dict]) -> dict:
    keys = ("test_rmse", "test_accuracy", "r_label_prenorm_mean", "r_label_prenorm_logstd", "train_loss_final")
    return {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs])),
                "per_seed": [r[k] for r in runs]} for k in keys}


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5.5 * len(results), 8), squeeze=False)
    colors = dict(zip(NORMS, ("tab:gray", "tab:blue", "tab:orange", "tab:green")))
    for col, task in enumerate(results):
        ax = axes[0, col]
        for norm, res in results[task].items():
            for i, run_ in enumerate(res["runs"]):
                ax.plot(run_["curve"]["step"], run_["curve"]["loss"], color=colors[norm], alpha=0.8,
                        label=norm if i == 0 else None)
        ax.set_yscale("log")
        ax.set_title(f"{task}: training MSE")
        ax.set_xlabel("step")
        ax.legend()
        ax = axes[1, col]
        names = list(results[task])
        rmse = [results[task][n]["summary"]["test_rmse"]["mean"] for n in names]
        err = [results[task][n]["summary"]["test_rmse"]["std"] for n in names]
        acc = [results[task][n]["summary"]["test_accuracy"]["mean"] for n in names]
        bars = ax.bar(names, rmse, yerr=err, color=[colors[n] for n in names])
        for b, a in zip(bars, acc):
            ax.annotate(f"acc {a:.0%}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=9)
        ax.set_title(f"{task}: test RMSE (label units), mean over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0], steps=1000, seeds=2)
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"any of {TASKS}")
    p.add_argument("--norms", default=",".join(NORMS))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n-train", type=int, default=20000)
    args = p.parse_args(argv)
    if args.full:
        args.steps, args.seeds, args.n_train = max(args.steps, 10000), max(args.seeds, 5), max(args.n_train, 100000)
    results: dict = {}
    for task in args.tasks.split(","):
        results[task] = {}
        for norm in args.norms.split(","):
            runs = []
            for seed in range(args.seeds):
                r = run(task, norm, seed, args.steps, n_train=args.n_train, n_test=2000, batch=args.batch_size,
                        lr=args.lr)
                log(f"{task:5s} {norm:5s} seed {seed}: test RMSE {r['test_rmse']:.3f} acc {r['test_accuracy']:.3f} "
                    f"({r['wall_s']:.0f}s)", args.quiet)
                runs.append(r)
            results[task][norm] = {"summary": summarise(runs), "runs": runs}
    out = {"experiment": "stats_loss", "run": run_info(args),
           "setup": {"model": "encoder -> pool -> norm -> MLP head (benchmarks/experiments/stats_models.py)",
                     "optimizer": f"adam lr {args.lr} cosine to 5%", "batch_size": args.batch_size,
                     "steps": args.steps, "seeds": args.seeds, "n_train": args.n_train, "n_test": 2000,
                     "cards": "6-deck shoe, 32 cards, running Hi-Lo count at every position",
                     "edges": "16x16 step-edge images, 0..8 edges, noise 0.05; bias-free image encoder",
                     "edges_bias": "the same images, image encoder with biases", "features": 32},
           "results": results}
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "stats_loss.json"), out)
    plot(results, os.path.join(args.out, "stats_loss.png"))
    return out


if __name__ == "__main__":
    main()
