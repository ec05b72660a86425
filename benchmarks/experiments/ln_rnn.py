"""Experiment 2: layer normalization trains recurrent nets faster (Ba, Kiros & Hinton 2016).

LSTM vs LN-LSTM and GRU vs LN-GRU (rnlib.nn.LayerNormLSTMCell / LayerNormGRUCell with layer_norm=True/False,
so the baseline is the same cell minus the norms) on scikit-learn digits read as a sequence: pixel by pixel
(T=64, default), row by row (T=8) or in a fixed random pixel order ("permuted", T=64). One recurrent layer,
the last hidden state -> linear classifier; Adam, cross-entropy, several seeds. Measured: steps until the
smoothed training loss first falls below a target, and final test accuracy.

    python -m benchmarks.experiments.ln_rnn [--steps 600] [--seeds 3] [--task pixels|rows|permuted] [--out DIR]
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.experiments.runner import base_parser, batches_from, fit_arrays, log, run_info, write_json

CELLS = ("lstm", "ln_lstm", "gru", "ln_gru")


class SequenceClassifier(nnx.Module):
    """(N, T, F) -> logits (N, classes): one recurrent layer (nnx.RNN over an rnlib cell), last hidden state."""

    def __init__(self, cell: str, in_features: int, hidden: int, num_classes: int, *, rngs: nnx.Rngs):
        from rnlib.nn import LayerNormGRUCell, LayerNormLSTMCell

        if cell not in CELLS:
            raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")
        cls = LayerNormLSTMCell if cell.endswith("lstm") else LayerNormGRUCell
        self.rnn = nnx.RNN(cls(in_features, hidden, layer_norm=cell.startswith("ln_"), rngs=rngs))
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(self.rnn(x)[:, -1])


def sequences(task: str, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 1) -> (N, T, F): rows (T=H, F=W), pixels (T=H*W, F=1), permuted (fixed permutation, seed 0)."""
    n, h, w = images.shape[:3]
    if task == "rows":
        return images.reshape(n, h, w)
    flat = images.reshape(n, h * w, 1)
    if task == "pixels":
        return flat
    if task == "permuted":
        return flat[:, np.random.default_rng(0).permutation(h * w)]
    raise ValueError(f"task: expected rows, pixels or permuted, got {task!r}")


def loss_fn(model, batch):
    logits = model(batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"])}


def steps_to(curve_steps, curve_loss, target: float, window: int = 3) -> int | None:
    """First logged step at which the moving average (over `window` log points) of the loss is below target."""
    loss = np.asarray(curve_loss)
    if len(loss) < window:
        return None
    sm = np.convolve(loss, np.ones(window) / window, mode="valid")
    hit = np.nonzero(sm < target)[0]
    return int(curve_steps[hit[0] + window - 1]) if hit.size else None


def run(cell: str, seed: int, data: dict, *, steps: int, hidden: int, batch: int, lr: float, target: float,
        log_every: int = 10) -> dict:
    model = SequenceClassifier(cell, data["train"]["x"].shape[-1], hidden, 10, rngs=nnx.Rngs(seed))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
    t0 = time.perf_counter()
    model, hist = fit_arrays(model, loss_fn, batches_from(data["train"], batch, seed), steps=steps, tx=tx,
                             log_every=log_every)
    logits = nnx.jit(lambda m, x: m(x))(model, data["test"]["x"])
    acc = float(np.mean(np.argmax(np.asarray(logits), -1) == data["test"]["y"]))
    st, lo = [h["step"] for h in hist], [h["loss"] for h in hist]
    return {"test_accuracy": acc, "final_train_loss": float(np.mean(lo[-5:])), "steps_to_target": steps_to(st, lo, target),
            "wall_s": time.perf_counter() - t0, "curve": {"step": st, "loss": lo}}


def plot(results: dict, path: str, title: str, target: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    color = {"lstm": "tab:gray", "ln_lstm": "tab:blue", "gru": "tab:brown", "ln_gru": "tab:orange"}
    for ax, fam in zip(axes, ("lstm", "gru")):
        for cell in (fam, f"ln_{fam}"):
            if cell not in results:
                continue
            for i, r in enumerate(results[cell]["runs"]):
                ax.plot(r["curve"]["step"], r["curve"]["loss"], color=color[cell], alpha=0.7,
                        label=f"{cell} (test acc {results[cell]['test_accuracy']['mean']:.1%})" if i == 0 else None)
        ax.axhline(target, color="k", lw=0.8, ls=":")
        ax.set(yscale="log", xlabel="step", title=f"{fam.upper()} vs LN-{fam.upper()}: training loss")
        if ax.get_legend_handles_labels()[0]:  # a panel the run has no curves for stays bare
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0], steps=600, seeds=3)
    p.add_argument("--task", default="pixels", choices=("pixels", "rows", "permuted"))
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--target-loss", type=float, default=0.5)
    args = p.parse_args(argv)
    if args.full:
        args.steps, args.seeds, args.hidden = max(args.steps, 5000), max(args.seeds, 5), max(args.hidden, 128)
    from rnlib.train import load_digits

    ds = load_digits(upsample=1)
    data = {s: {"x": sequences(args.task, ds.take(s, np.arange(ds.size(s)))["image"]),
                "y": ds.take(s, np.arange(ds.size(s)))["label"]} for s in ("train", "test")}
    results: dict = {}
    for cell in args.cells.split(","):
        runs = []
        for seed in range(args.seeds):
            r = run(cell, seed, data, steps=args.steps, hidden=args.hidden, batch=args.batch_size, lr=args.lr,
                    target=args.target_loss)
            log(f"{cell:7s} seed {seed}: steps to loss<{args.target_loss} {r['steps_to_target']}  test acc "
                f"{r['test_accuracy']:.3f}  ({r['wall_s']:.0f}s)", args.quiet)
            runs.append(r)
        reached = [r["steps_to_target"] for r in runs if r["steps_to_target"] is not None]
        results[cell] = {
            "steps_to_target": {"per_seed": [r["steps_to_target"] for r in runs],
                                "median_of_reached": float(np.median(reached)) if reached else None,
                                "reached": f"{len(reached)}/{len(runs)}"},
            "test_accuracy": {"mean": float(np.mean([r["test_accuracy"] for r in runs])),
                              "std": float(np.std([r["test_accuracy"] for r in runs])),
                              "per_seed": [r["test_accuracy"] for r in runs]},
            "final_train_loss": {"mean": float(np.mean([r["final_train_loss"] for r in runs]))},
            "runs": runs}
    t, f = data["train"]["x"].shape[1:]
    out = {"experiment": "ln_rnn", "run": run_info(args),
           "setup": {"data": f"digits 8x8, task {args.task}: T={t} steps of {f} features; {ds.size('train')} train / "
                             f"{ds.size('test')} test", "model": f"1-layer RNN, hidden {args.hidden}, last state -> linear",
                     "optimizer": f"adam lr {args.lr}, global-norm clip 1.0", "batch_size": args.batch_size,
                     "steps": args.steps, "seeds": args.seeds, "target_loss": args.target_loss},
           "results": results}
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "ln_rnn.json"), out)
    plot(results, os.path.join(args.out, "ln_rnn.png"),
         f"digits as sequences ({args.task}, T={t}), {args.steps} steps, {args.seeds} seeds", args.target_loss)
    return out


if __name__ == "__main__":
    main()
