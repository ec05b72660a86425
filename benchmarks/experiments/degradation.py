"""Experiment 1: the degradation problem (He et al. 2015, Fig. 1 and 6).

Plain-20/32/44/56 and ResNet-20/32/44/56 (rnlib.models, option-A shortcuts, BatchNorm), trained with the same
recipe by rnlib.train.fit (SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 50 % and 75 % of the
steps, the paper's translation augmentation). Claim: deeper plain nets have *higher training error*; residual
nets do not degrade.

    python -m benchmarks.experiments.degradation [--steps N] [--depths 20,56] [--data cifar10 --data-dir DIR]
                                                [--full] [--out DIR]

Embedded default: scikit-learn digits at 8x8 (``--upsample 2`` for the 16x16 of rnlib-train) on the CPU.
``--full``: CIFAR-10, 64k steps, batch 128 (the paper's schedule; an accelerator is needed).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from benchmarks.experiments.runner import base_parser, log, run_info, write_json

PAPER_CIFAR_TEST_ERROR = {"resnet20": 0.0875, "resnet32": 0.0751, "resnet44": 0.0717, "resnet56": 0.0697,
                          "resnet110": 0.0643}


def train_one(name: str, dataset, *, steps: int, batch_size: int, lr: float, seed: int, log_every: int,
              quiet: bool, schedule_steps: int | None = None) -> dict:
    from rnlib.train import TrainConfig, fit

    cfg = TrainConfig(model=name, steps=steps, batch_size=batch_size, lr=lr, seed=seed, log_every=log_every,
                      quiet=True, schedule_steps=schedule_steps, eval_batch_size=500)
    t0 = time.perf_counter()
    res = fit(cfg, dataset=dataset)
    out = {"final_train_error": float(res.train_error), "final_test_error": 1.0 - float(res.test_accuracy),
           "wall_s": time.perf_counter() - t0,
           "curve": {"step": [r["step"] for r in res.history], "train_error": [r["train_error"] for r in res.history],
                     "loss": [r["loss"] for r in res.history]}}
    log(f"{name:9s} seed {seed}: train err {out['final_train_error']:.4f}  test err {out['final_test_error']:.4f} "
        f"({out['wall_s']:.0f}s)", quiet)
    return out


def plot(results: dict, depths: list[int], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, arch in zip(axes, ("plain", "resnet")):
        for i, d in enumerate(depths):
            name = f"{arch}{d}"
            if name not in results:
                continue
            c = results[name]["runs"][0]["curve"]
            # Smooth the noisy per-batch error a little (moving average over 5 log points).
            w = min(5, len(c["train_error"]))
            e = np.convolve(c["train_error"], np.ones(w) / w, mode="valid")
            ax.plot(c["step"][w - 1:], 100 * e, color=cmap(i / max(1, len(depths) - 1)),
                    label=f"{arch}-{d} (final {100 * results[name]['final_train_error']:.1f}%)")
        ax.set_title(f"{'plain' if arch == 'plain' else 'ResNet'}: training error (train mode, augmented)")
        ax.set_xlabel("step")
        ax.set_yscale("symlog", linthresh=1)
        if ax.get_legend_handles_labels()[0]:  # a panel the run has no curves for stays bare
            ax.legend()
    axes[0].set_ylabel("training error (%)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0], steps=600, seeds=1)
    p.add_argument("--depths", default="20,32,44,56", help="comma-separated CIFAR depths (6n+2)")
    p.add_argument("--archs", default="plain,resnet")
    p.add_argument("--batch-size", type=int, default=64, help="default 64 to fit the CPU budget; paper: 128")
    p.add_argument("--data", default="digits", choices=("digits", "cifar10"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--upsample", type=int, default=1, help="digits only: 1 -> 8x8 images, 2 -> 16x16")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate; default 0.1 * batch/128 (the paper's 0.1 at batch 128, linearly scaled)")
    p.add_argument("--merge", action="store_true",
                   help="keep the other models' results already in OUT/degradation.json (run depths in parts)")
    p.add_argument("--merge-from", default="", help="comma-separated degradation.json files whose results to keep")
    args = p.parse_args(argv)
    from rnlib.train import load_cifar10, load_digits

    if args.full:
        args.data, args.steps, args.batch_size = "cifar10", max(args.steps, 64000), 128
    if args.data == "cifar10":
        if not args.data_dir:
            p.error("--data cifar10 needs --data-dir DIR holding data_batch_1..5 and test_batch")
        dataset = load_cifar10(args.data_dir)
    else:
        dataset = load_digits(upsample=args.upsample)
    if args.lr is None:
        args.lr = 0.1 * args.batch_size / 128
    depths = [int(d) for d in args.depths.split(",") if d]
    results: dict = {}
    json_path = os.path.join(args.out, "degradation.json")
    previous_runs: list = []
    if args.merge and os.path.exists(json_path):
        with open(json_path) as f:
            prev = json.load(f)
        results.update(prev["results"])
        previous_runs = prev.get("runs_merged", [prev["run"]])
    for extra in [f for f in args.merge_from.split(",") if f]:
        with open(extra) as f:
            prev = json.load(f)
        results.update(prev["results"])
        previous_runs += prev.get("runs_merged", [prev["run"]])
    for d in depths:  # interleave plain/resnet so a cut-short run still has matched pairs
        for arch in args.archs.split(","):
            name = f"{arch}{d}"
            runs = [train_one(name, dataset, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=s,
                              log_every=args.log_every, quiet=args.quiet) for s in range(args.seeds)]
            results[name] = {"final_train_error": float(np.mean([r["final_train_error"] for r in runs])),
                             "final_test_error": float(np.mean([r["final_test_error"] for r in runs])),
                             "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "runs": runs}
    shape = "x".join(str(s) for s in dataset.image_shape)
    all_depths = sorted({int(k.removeprefix("plain").removeprefix("resnet")) for k in results})
    results = {f"{a}{d}": results[f"{a}{d}"] for d in all_depths for a in ("plain", "resnet") if f"{a}{d}" in results}
    out = {"experiment": "degradation", "run": run_info(args), "runs_merged": previous_runs + [run_info(args)],
           "setup": {"data": f"{dataset.name} {shape}, {dataset.size('train')} train / {dataset.size('test')} test",
                     "recipe": f"rnlib.train.fit: SGD 0.9, wd 1e-4, lr {args.lr:g} (0.1 x batch/128) /10 at 50% and "
                               "75% of the steps, translation augmentation", "lr": args.lr,
                     "steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds,
                     "train_error": "full training set, eval mode, no augmentation, after the last step"},
           "final_train_error": {k: v["final_train_error"] for k, v in results.items()},
           "final_test_error": {k: v["final_test_error"] for k, v in results.items()},
           "paper_cifar10_test_error": PAPER_CIFAR_TEST_ERROR,
           "results": results}
    os.makedirs(args.out, exist_ok=True)
    write_json(json_path, out)
    plot(results, all_depths, os.path.join(args.out, "degradation.png"),
         f"Degradation on {dataset.name} {shape}: {args.steps} steps, batch {args.batch_size}")
    return out


if __name__ == "__main__":
    main()
