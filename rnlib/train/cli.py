r"""`rnlib-train`: train a ResNet / plain net on digits (embedded), CIFAR-10 or an ImageNet folder.

examples:
  rnlib-train --model resnet20 --data digits --steps 1500 --out runs/r20
  rnlib-train --model resnet110 --data cifar10 --data-dir ~/cifar-10-batches-py --steps 64000 --warmup \
      --ckpt-dir ckpt/r110 --ckpt-every 2000 --resume --out runs/r110
  rnlib-train --model resnet50 --data imagenet --data-dir ~/imagenet --batch-size 256 --precision bf16 \
      --ckpt-dir ckpt/r50 --ckpt-every 5000 --resume --out runs/r50       # the paper: 90 epochs, lr/10 at 30, 60
  ... --schedule cosine --warmup-epochs 5 --label-smoothing 0.1          # the Flax ImageNet example's recipe
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence

from rnlib.train._data import DATASETS
from rnlib.train._loop import NonFiniteLossError, TrainConfig, fit
from rnlib.train._schedules import OPTIMIZERS, SCHEDULES
from rnlib.train._state import PRECISIONS


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}; write e.g. "
                                         '\'{"norm": "layer", "zero_init_last": true}\'') from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}} of keyword arguments, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="rnlib-train", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=d.model, help="a name from rnlib.models: resnet20, plain56, resnet110, "
                   "preact_resnet164, resnet50, ... (default: %(default)s)")
    g.add_argument("--model-kwargs", type=_json_object, default={}, metavar="JSON",
                   help='keyword arguments for the model builder, e.g. \'{"norm": "layer"}\' (default: none)')
    g.add_argument("--data", default=d.data, choices=DATASETS,
                   help="digits: scikit-learn's 8x8 digits (no download); cifar10: the CIFAR-10 python batches; "
                        "imagenet: an ImageFolder tree DIR/train/<class>/*.JPEG, DIR/val/<class>/*.JPEG "
                        "(default: %(default)s)")
    g.add_argument("--data-dir", default=None, metavar="DIR",
                   help="the CIFAR-10 batches' folder or the ImageNet folder (needed for cifar10 and imagenet)")
    g.add_argument("--image-size", type=_positive_int, default=d.image_size, metavar="S",
                   help="imagenet: train crop / eval centre-crop size in pixels; eval resizes the shorter side to "
                        "S*256/224 first (default: %(default)s)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="imagenet: decoding processes (0: decode in this process) (default: min(8, CPUs))")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train without augmentation (by default it is on: pad/crop/flip for digits and CIFAR, "
                        "random-resized crop and flip for imagenet)")

    g = p.add_argument_group("length and recipe (defaults: the paper's CIFAR recipe; ImageNet's with --data imagenet)")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int, default=None,
                        help=f"number of SGD updates (default: {d.steps}; imagenet: 90 epochs)")
    length.add_argument("--epochs", type=_positive_float, default=None,
                        help="run length in passes over the training set (steps = epochs x floor(n / batch))")
    g.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="global batch size (default: "
                   "%(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="initialisation, data order and augmentation seed "
                   "(default: %(default)s)")
    g.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                   help="bf16: bfloat16 compute, float32 parameters and loss (default: %(default)s)")
    g.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help="(default: %(default)s)")
    g.add_argument("--schedule", default=None, choices=SCHEDULES,
                   help="paper: lr/10 at 50%% and 75%% of the horizon; imagenet: lr/10 at 1/3 and 2/3 (epochs 30 "
                        "and 60 of 90); cosine: cosine decay to 0 (default: paper; imagenet for --data imagenet)")
    g.add_argument("--schedule-steps", type=_positive_int, default=None, metavar="N",
                   help="schedule horizon in steps (default: the run length)")
    g.add_argument("--lr", type=_positive_float, default=None,
                   help="peak learning rate (default: 0.1; imagenet: 0.1 x batch size / 256)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="L2 weight decay (adamw: decoupled) (default: %(default)s)")
    g.add_argument("--warmup", action="store_true",
                   help="lr 0.01 for the first 400/64000 of the run (the paper's ResNet-110 warm-up)")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, metavar="E",
                   help="linear warm-up from 0 over E epochs (the Flax ImageNet example: 5 with --schedule cosine) "
                        "(default: %(default)s)")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, metavar="EPS",
                   help="cross-entropy against (1-EPS) one-hot + EPS/classes (e.g. 0.1) (default: %(default)s)")

    g = p.add_argument_group("output, checkpoints and devices")
    g.add_argument("--out", default="runs/latest", help="writes metrics.jsonl, final.json, curves.png "
                   "(default: %(default)s)")
    g.add_argument("--ckpt-dir", default=None, metavar="DIR", help="save checkpoints here (default: none)")
    g.add_argument("--ckpt-every", type=_positive_int, default=d.ckpt_every, metavar="N",
                   help="checkpoint every N steps and at the end (default: %(default)s)")
    g.add_argument("--ckpt-keep", type=_positive_int, default=d.ckpt_keep, metavar="K",
                   help="keep the newest K checkpoints (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --ckpt-dir")
    g.add_argument("--log-every", type=_positive_int, default=d.log_every, metavar="N",
                   help="write a metrics.jsonl row every N steps (default: %(default)s)")
    g.add_argument("--print-every", type=_positive_int, default=d.print_every, metavar="N",
                   help="without a terminal (or with --quiet): print a progress line every N steps "
                        "(default: %(default)s)")
    g.add_argument("--eval-every", type=int, default=d.eval_every, metavar="N",
                   help="test-set evaluation every N steps (0: only at the end) (default: %(default)s)")
    g.add_argument("--devices", type=_positive_int, default=None, metavar="N",
                   help="use the first N devices (default: all)")
    g.add_argument("--quiet", action="store_true", help="plain progress lines instead of a progress bar")
    g.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host: start one process per host with the "
                        "same arguments; each feeds its slice of every global batch)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resume and not args.ckpt_dir:
        print("rnlib-train: --resume needs --ckpt-dir", file=sys.stderr)
        return 2
    if args.distributed:
        import jax

        jax.distributed.initialize()  # coordinator/process ids from the cluster environment (SLURM, TPU, ...)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.workers is None:
        values["workers"] = min(8, os.cpu_count() or 1)
    if args.data == "imagenet":
        if args.steps is None and args.epochs is None:
            values["epochs"] = 90.0
        values["final_train_eval"] = False  # a full pass over 1.28M training images: not worth it by default
    config = TrainConfig(**values)
    try:
        result = fit(config)
    except NonFiniteLossError as e:
        print(f"rnlib-train: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"rnlib-train: error: {e}", file=sys.stderr)
        return 2
    s = result.summary()
    train_err = "n/a" if s["train_error"] is None else f"{100 * s['train_error']:.2f}%"
    print(f"test accuracy {100 * s['test_accuracy']:.2f}%  train error {train_err}  steps {s['steps']}  "
          f"wall {s['wall_time_s']:.1f}s  params sha256 {s['params_sha256'][:16]}…  -> {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
