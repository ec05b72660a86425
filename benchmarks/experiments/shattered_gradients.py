"""Experiment 4: why deep plain nets fail although their gradients do not vanish (Balduzzi et al. 2017).

Part A (controlled): plain vs residual ReLU MLPs (deep_mlps.py) of depth 2..128, with BatchNorm, LayerNorm or no
norm, at initialisation. For each: (i) the autocorrelation of the input gradient along a line of 256 inputs
(rnlib.diagnostics.shattering) and its correlation length; (ii) per-layer gradient norms of a regression loss
(rnlib.diagnostics.grad_norms), summarised by first-layer / last-layer norm.
Part B (the nets of experiment 1): the same two measurements for plain-20/56 and ResNet-20/56 (rnlib.models,
BatchNorm in training mode) on digits, along the straight line between two training images.

    python -m benchmarks.experiments.shattered_gradients [--seeds 3] [--depths 2,4,...,128] [--out DIR]
"""
from __future__ import annotations

import os
import time
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.experiments.deep_mlps import ARCHS, MLP_NORMS, apply_mlp, init_mlp
from benchmarks.experiments.runner import base_parser, log, run_info, write_json
from rnlib.diagnostics import correlation_length, gradient_autocorrelation, grad_norms, ordered_values

LAGS = (1, 2, 4, 8, 16, 32)
BN_BATCH_NOTE = ("BatchNorm runs in training mode on a batch made of a reference batch from the data distribution "
                 "(256 random inputs / training images) plus the 256 line points (--bn-batch data), or of the line "
                 "alone (--bn-batch line; then BN rescales the line's own small variation to unit variance at every "
                 "layer). Gradients are those of the line points' outputs.")


@lru_cache(maxsize=None)
def _mlp_fns(arch: str, norm: str):
    """Jitted (line gradients, loss gradients) for one architecture; reused across depths/seeds of equal shape."""
    f = lambda p, x: apply_mlp(p, x, arch=arch, norm=norm)  # noqa: E731

    def line_sum(x, ref, p):
        # BatchNorm statistics come from the reference rows plus the line (see BN_BATCH_NOTE)
        return jnp.sum(f(p, jnp.concatenate([ref, x]))[ref.shape[0]:])

    line_grad = jax.jit(jax.grad(line_sum))
    loss_grad = jax.jit(jax.grad(lambda p, x, y: 0.5 * jnp.mean((f(p, x) - y) ** 2)))
    return line_grad, loss_grad


def measure_mlp(arch: str, norm: str, depth: int, seed: int, *, width: int, d_in: int, points: int,
                max_lag: int, bn_batch: str = "data") -> dict:
    k_p, k_x0, k_v, k_b, k_y = jax.random.split(jax.random.PRNGKey(seed), 5)
    params = init_mlp(k_p, depth, width=width, in_features=d_in)
    line_grad, loss_grad = _mlp_fns(arch, norm)
    x0 = jax.random.normal(k_x0, (d_in,))
    v = jax.random.normal(k_v, (d_in,)) / np.sqrt(d_in)
    ts = jnp.linspace(-2.0, 2.0, points)
    xs = x0[None] + ts[:, None] * v[None]
    xb = jax.random.normal(k_b, (points, d_in))
    ref = xb if bn_batch == "data" else xb[:0]
    g = np.asarray(line_grad(xs, ref, params), np.float64)
    acf = gradient_autocorrelation(g, max_lag)
    yb = jax.random.normal(k_y, (points,))
    gp = loss_grad(params, xb, yb)
    per_layer = ordered_values(grad_norms({"layers": gp["layers"]}, group="leaf", unstack=lambda p: 1))
    return {"acf": acf.tolist(), "correlation_length": correlation_length(acf),
            "input_grad_norm_mean": float(np.mean(np.linalg.norm(g, axis=1))),
            "layer_grad_norms": per_layer.tolist(),
            "first_over_last": float(per_layer[0] / per_layer[-1]),
            "finite": bool(np.all(np.isfinite(g)) and np.all(np.isfinite(per_layer)))}


def part_a(depths, seeds, *, width=128, d_in=16, points=256, max_lag=64, bn_batch="data", quiet=False) -> dict:
    out: dict = {}
    for arch in ARCHS:
        for norm in MLP_NORMS:
            key = f"{arch}/{norm}"
            out[key] = {}
            for depth in depths:
                runs = [measure_mlp(arch, norm, depth, s, width=width, d_in=d_in, points=points, max_lag=max_lag,
                                    bn_batch=bn_batch) for s in range(seeds)]
                acf = np.mean([r["acf"] for r in runs], axis=0)
                out[key][str(depth)] = {
                    "acf_mean": acf.tolist(),
                    "acf_at_lag": {str(k): float(acf[k]) for k in LAGS if k < len(acf)},
                    "correlation_length": {"mean": float(np.mean([r["correlation_length"] for r in runs])),
                                           "per_seed": [r["correlation_length"] for r in runs]},
                    "first_over_last_grad_norm": {"median": float(np.median([r["first_over_last"] for r in runs])),
                                                  "per_seed": [r["first_over_last"] for r in runs]},
                    "layer_grad_norms_seed0": runs[0]["layer_grad_norms"],
                    "input_grad_norm_mean": float(np.mean([r["input_grad_norm_mean"] for r in runs])),
                    "finite": all(r["finite"] for r in runs)}
                r = out[key][str(depth)]
                log(f"{key:16s} depth {depth:3d}: corr length {r['correlation_length']['mean']:6.2f}  "
                    f"acf[1] {r['acf_at_lag']['1']:+.3f}  grad first/last {r['first_over_last_grad_norm']['median']:.3g}",
                    quiet)
    return out


def _conv_layer_order(norms: dict[str, float]) -> list[str]:
    """Conv kernels of a CIFAR ResNet/plain net in network order: stem, per stage head block then stack blocks."""
    stages = sorted({int(k.split("/")[1]) for k in norms if k.startswith("heads/")})
    order = ["stem/kernel"]
    for s in stages:
        order += [f"heads/{s}/params/conv{j}/kernel" for j in (1, 2)]
        blocks = sorted({int(k.split("/")[2]) for k in norms if k.startswith(f"stacks/{s}/")})
        order += [f"stacks/{s}/{b}/params/conv{j}/kernel" for b in blocks for j in (1, 2)]
    return order + ["head/kernel"]


def part_b(names, seeds, *, points=256, max_lag=64, upsample=1, bn_batch="data", quiet=False) -> dict:
    """Init-time shattering and per-layer gradient norms of the experiment-1 nets on digits (train-mode BN)."""
    from flax import nnx

    from rnlib.diagnostics import param_grad_norms
    from rnlib.models import build
    from rnlib.train import load_digits

    ds = load_digits(upsample=upsample)
    out: dict = {}
    for name in names:
        runs = []
        for seed in range(seeds):
            t0 = time.perf_counter()
            model = build(name, 10, nnx.Rngs(seed), in_features=1)
            model.train()
            rng = np.random.default_rng(seed)
            a, b = ds.take("train", rng.choice(ds.size("train"), 2, replace=False))["image"]
            w = jax.random.normal(jax.random.PRNGKey(100 + seed), (10,))
            gdef, state = nnx.split(model)

            @jax.jit
            def line_grad(xs, ref, state):
                # merge inside the traced function (copy=True): BatchNorm writes its batch statistics there
                def f(z, st):
                    logits = nnx.merge(gdef, st, copy=True)(jnp.concatenate([ref, z]))
                    return jnp.sum(logits[ref.shape[0]:] @ w)

                return jax.grad(f)(xs, state)

            ts = jnp.linspace(-2.0, 2.0, points).reshape(-1, 1, 1, 1)
            xs = (a + b)[None] / 2 + ts * ((b - a) / 4)[None]  # t = -2 .. 2 walks from image a to image b
            ref = ds.take("train", rng.choice(ds.size("train"), points if bn_batch == "data" else 0,
                                              replace=False))["image"]
            g = np.asarray(line_grad(xs, jnp.asarray(ref), state), np.float64)
            acf = gradient_autocorrelation(g, max_lag)
            batch = ds.take("train", rng.choice(ds.size("train"), 128, replace=False))

            def ce(m, x, y):
                logits = m(x)
                return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

            _, norms = param_grad_norms(model, ce, jnp.asarray(batch["image"]), jnp.asarray(batch["label"]),
                                        group="leaf", unstack=lambda p: 2 if p[0] == "stacks" else None)
            layers = ordered_values(norms, _conv_layer_order(norms))
            runs.append({"acf": acf.tolist(), "correlation_length": correlation_length(acf),
                         "layer_grad_norms": layers.tolist(), "first_over_last": float(layers[0] / layers[-2])})
            log(f"{name:9s} seed {seed}: corr length {runs[-1]['correlation_length']:.2f} acf[1] {acf[1]:+.3f} "
                f"conv grad first/last {runs[-1]['first_over_last']:.3g} ({time.perf_counter() - t0:.0f}s)", quiet)
        acf = np.mean([r["acf"] for r in runs], axis=0)
        out[name] = {"acf_mean": acf.tolist(), "acf_at_lag": {str(k): float(acf[k]) for k in LAGS if k < len(acf)},
                     "correlation_length": {"mean": float(np.mean([r["correlation_length"] for r in runs])),
                                            "per_seed": [r["correlation_length"] for r in runs]},
                     "first_over_last_conv_grad_norm": [r["first_over_last"] for r in runs],
                     "layer_grad_norms_seed0": runs[0]["layer_grad_norms"]}
    return out


def plot(a: dict, b: dict, depths, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(12, 9))
    style = {"plain": "-", "residual": "--"}
    color = {"none": "tab:gray", "batch": "tab:blue", "layer": "tab:orange"}
    for key, res in a.items():
        arch, norm = key.split("/")
        ds = [d for d in depths if str(d) in res]
        ax[0, 0].plot(ds, [res[str(d)]["correlation_length"]["mean"] for d in ds], style[arch], color=color[norm],
                      marker="o", label=key)
        ax[0, 1].plot(ds, [res[str(d)]["first_over_last_grad_norm"]["median"] for d in ds], style[arch],
                      color=color[norm], marker="o", label=key)
        deep = str(max(ds))
        ax[1, 0].plot(res[deep]["acf_mean"][:33], style[arch], color=color[norm], label=f"{key} depth {deep}")
    ax[0, 0].set(xscale="log", xlabel="depth (weight layers)", ylabel="correlation length (lags, ACF < 1/e)",
                 title="Gradient correlation length along a line of 256 inputs")
    ax[0, 1].set(xscale="log", yscale="log", xlabel="depth", ylabel="||dL/dW_first|| / ||dL/dW_last||",
                 title="Per-layer gradient norms: first / last layer")
    ax[1, 0].set(xlabel="lag", ylabel="autocorrelation", title="Gradient autocorrelation at the largest depth")
    for name, res in b.items():
        ax[1, 1].plot(res["acf_mean"][:33], "-" if name.startswith("plain") else "--", marker=".",
                      label=f"{name} (corr len {res['correlation_length']['mean']:.1f})")
    ax[1, 1].set(xlabel="lag", ylabel="autocorrelation", title="Experiment-1 nets at init, digits (train-mode BN)")
    for x in ax.ravel():
        x.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0], steps=0, seeds=3)
    p.add_argument("--depths", default="2,4,8,16,32,64,128")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--nets", default="plain20,plain56,resnet20,resnet56", help="part B models ('' to skip)")
    p.add_argument("--seeds-b", type=int, default=2, help="seeds for part B (default 2)")
    p.add_argument("--bn-batch", default="data", choices=("data", "line"), help=BN_BATCH_NOTE)
    p.add_argument("--name", default="shattered_gradients", help="basename of the JSON/PNG written to --out")
    args = p.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    t0 = time.perf_counter()
    a = part_a(depths, args.seeds, width=args.width, bn_batch=args.bn_batch, quiet=args.quiet)
    nets = [n for n in args.nets.split(",") if n]
    b = part_b(nets, args.seeds_b, bn_batch=args.bn_batch, quiet=args.quiet) if nets else {}
    out = {"experiment": "shattered_gradients", "run": run_info(args),
           "setup": {"part_a": f"ReLU MLPs width {args.width}, input dim 16, He init, depths {depths}, "
                               f"{args.seeds} seeds; line x0 + t v, t in [-2, 2], 256 points, x0 ~ N(0, I), "
                               "v ~ N(0, I/16); grad norms of 0.5*MSE to random targets on 256 random inputs",
                     "part_b": "rnlib.models CIFAR nets (BatchNorm, train mode), digits 8x8, line between two "
                               "training images (256 points), random read-out of the logits; conv grad norms of "
                               "cross-entropy on a batch of 128",
                     "acf": "rnlib.diagnostics.gradient_autocorrelation (centered), lags 0..64",
                     "bn_batch": args.bn_batch, "bn_note": BN_BATCH_NOTE},
           "part_a": a, "part_b": b, "wall_s": time.perf_counter() - t0}
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, f"{args.name}.json"), out)
    plot(a, b, depths, os.path.join(args.out, f"{args.name}.png"))
    return out


if __name__ == "__main__":
    main()
