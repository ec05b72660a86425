"""CIFAR ResNet train steps: a scanned stage vs an unrolled one vs the Flax-example reference, timed in one run.

    python -m benchmarks.scan_vs_unrolled --depths 20 56 --batch 32

Candidates (same model, optimizer and batch as ``python -m benchmarks --suite train``):
  scan            ``build("resnetN", scan=True)``: each stage's identical blocks under ``lax.scan``, keeping only
                  convolution outputs and batch statistics for the backward pass (``rnlib.ops.residual.SCAN_POLICY``)
  scan_save_all   the same scan keeping every residual autodiff produces (``remat=True`` with
                  ``jax.checkpoint_policies.everything_saveable``: what the scan did before the policy)
  unrolled        ``scan=False``: one traced block per layer
  reference       ``benchmarks/reference/resnet_linen.py`` (the Flax ImageNet example's modules and train step)
Step times are medians of rounds that call each candidate once in turn (``harness.time_interleaved``), so load
drift on a shared machine hits all of them alike; the figures to read are the ratios printed last.
"""
from __future__ import annotations

import argparse
import functools

import jax

from benchmarks import harness
from benchmarks.suites import train as suite

CANDIDATES = {
    "scan": {"scan": True},
    "scan_save_all": {"scan": True, "remat": True, "remat_policy": jax.checkpoint_policies.everything_saveable},
    "unrolled": {"scan": False},
}


def measure(depth: int, batch_size: int, timing: dict, names: list[str]) -> dict[str, tuple[float, float]]:
    """{candidate: (median step seconds, compile seconds)} for ResNet-``depth`` at ``batch_size``."""
    batch = suite.cifar_batch(batch_size)
    built = {}
    for name in names:
        make = (functools.partial(suite.reference_resnet, depth, batch) if name == "reference" else
                functools.partial(suite.rnlib_resnet, depth, batch, **CANDIDATES[name]))
        built[name] = make()
        print(f"  resnet{depth} {name}: compiled in {built[name][2]:.1f} s", flush=True)
    times = harness.time_interleaved({k: (c[0], (), c[1]) for k, c in built.items()}, **timing)
    return {k: (times[k], built[k][2]) for k in names}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[20, 56])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (each calls every candidate once)")
    ap.add_argument("--candidates", nargs="+", default=[*CANDIDATES, "reference"],
                    choices=[*CANDIDATES, "reference"])
    args = ap.parse_args(argv)
    timing = {"warmup": 1, "min_runs": args.rounds, "max_runs": args.rounds, "target_s": 0.0}
    print(f"platform {harness.platform()}, {harness.device_name()}, jax {jax.__version__}, batch {args.batch}")
    for depth in args.depths:
        res = measure(depth, args.batch, timing, args.candidates)
        base = "reference" if "reference" in res else args.candidates[0]
        print(f"resnet{depth}: " + ", ".join(f"{k} {t * 1e3:.1f} ms" for k, (t, _) in res.items()))
        print(f"resnet{depth} step time / {base}'s: "
              + ", ".join(f"{k} {t / res[base][0]:.2f}" for k, (t, _) in res.items()), flush=True)


if __name__ == "__main__":
    main()
