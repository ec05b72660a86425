"""`rnlib-train`: train a CIFAR-style ResNet / plain net on digits (embedded) or CIFAR-10.

    rnlib-train --model resnet20 --data digits --steps 1500 --out runs/r20
    rnlib-train --model resnet110 --data cifar10 --data-dir ~/cifar-10-batches-py --steps 64000 --warmup \
        --ckpt-dir ckpt/r110 --ckpt-every 2000 --resume --out runs/r110
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Sequence

from rnlib.train.data import DATASETS
from rnlib.train.loop import NonFiniteLossError, TrainConfig, fit
from rnlib.train.schedules import OPTIMIZERS, SCHEDULES
from rnlib.train.state import PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="rnlib-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=d.model, help="a name from rnlib.models (resnet20, plain56, resnet110, "
                                                    "preact_resnet164, ...)")
    p.add_argument("--data", default=d.data, choices=DATASETS)
    p.add_argument("--data-dir", default=None, help="folder with the CIFAR-10 python batches")
    p.add_argument("--steps", type=int, default=d.steps, help="number of SGD updates")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                   help="bf16: bfloat16 compute, float32 parameters and loss")
    p.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES,
                   help="paper: lr/10 at 50%% and 75%% of the schedule horizon")
    p.add_argument("--schedule-steps", type=int, default=None, help="schedule horizon (None: --steps)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup", action="store_true", help="lr 0.01 for the first 400/64000 of the run (ResNet-110)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="disable the pad/crop(/flip) augmentation")
    p.add_argument("--out", default="runs/latest", help="writes metrics.jsonl, final.json, curves.png")
    p.add_argument("--ckpt-dir", default=None)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--ckpt-keep", type=int, default=d.ckpt_keep)
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --ckpt-dir")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="test-set evaluation interval (0: end)")
    p.add_argument("--devices", type=int, default=None, help="use the first N devices (None: all)")
    p.add_argument("--model-kwargs", type=json.loads, default={}, help='JSON, e.g. \'{"norm": "layer"}\'')
    p.add_argument("--quiet", action="store_true", help="plain log lines instead of a progress bar")
    p.add_argument("--distributed", action="store_true",
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
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
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
