"""`fit(config)`: the training loop behind the `rnlib-train` CLI, callable from Python.

    from rnlib.train import TrainConfig, fit
    result = fit(TrainConfig(model="resnet20", data="digits", steps=1500, out="runs/r20"))
    result.test_accuracy, result.params_sha256, result.history, result.state.model()
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from rnlib.train._checkpoint import Checkpointer
from rnlib.train._data import Dataset, load_dataset
from rnlib.train._report import MetricsLog, Progress, plot_curves, write_json
from rnlib.train._schedules import make_optimizer, make_schedule
from rnlib.train._sharding import DataParallel
from rnlib.train._state import (TrainState, create_train_state, init_module, make_eval_step, make_train_step,
                               params_sha256)


class NonFiniteLossError(FloatingPointError):
    """Training stopped because the loss became NaN/inf; `step` is the first such step (1-based)."""

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


@dataclasses.dataclass
class TrainConfig:
    """Everything a run needs; the CLI flags map one-to-one onto these fields.

    Defaults are the paper's CIFAR recipe (He et al. 2015): SGD momentum 0.9, weight decay 1e-4, batch 128,
    lr 0.1 with /10 at 50 % and 75 % of `steps` (`schedule_steps` overrides the horizon, e.g. 64000 to stop a
    paper-length schedule early), optional 0.01 warm-up. With data="imagenet" the defaults become the paper's
    ImageNet recipe: lr 0.1 x batch_size / 256 (`lr` None), /10 at 1/3 and 2/3 of the horizon (schedule
    "imagenet": epochs 30 and 60 of `epochs` = 90). `epochs`, when set, replaces `steps` (steps = epochs x
    floor(train size / batch_size)); `warmup_epochs` is a linear warm-up from 0 (the Flax example: 5, with
    schedule "cosine" and label_smoothing 0.1).
    """

    model: str = "resnet20"
    data: str = "digits"
    data_dir: str | None = None
    steps: int = 1500
    epochs: float | None = None
    batch_size: int = 128
    seed: int = 0
    precision: str = "f32"
    optimizer: str = "sgd"
    schedule: str | None = None
    schedule_steps: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup: bool = False
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = True
    image_size: int = 224
    workers: int = 0
    out: str | None = None
    ckpt_dir: str | None = None
    ckpt_every: int = 1000
    ckpt_keep: int = 3
    resume: bool = False
    log_every: int = 10
    print_every: int = 100
    eval_every: int = 0
    eval_batch_size: int = 512
    final_train_eval: bool = True
    devices: int | None = None
    quiet: bool = False
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrainResult:
    """test_accuracy / train_error: full test / training set, eval mode, no augmentation, after the last step
    (train_error is None if `final_train_eval` is off). history: the metrics.jsonl rows. state: final TrainState."""

    test_accuracy: float
    train_error: float | None
    steps: int
    params_sha256: str
    wall_time_s: float
    history: list[dict[str, Any]]
    state: TrainState

    def summary(self) -> dict[str, Any]:
        return {"test_accuracy": self.test_accuracy, "train_error": self.train_error, "steps": self.steps,
                "params_sha256": self.params_sha256, "wall_time_s": self.wall_time_s}


def _model_names_hint() -> str:
    from rnlib.models import EXAMPLES

    return f"valid names: {', '.join(EXAMPLES)}" + \
        " (CIFAR ResNets: depth 6n+2; ImageNet ResNets: depth 18, 34, 50, 101, 152)"


def build_model(config: TrainConfig, dataset: Any, rngs: nnx.Rngs) -> nnx.Module:
    """`rnlib.models.build(config.model, classes, rngs, in_features=..., **config.model_kwargs)`; a model name
    that does not build gives a ValueError listing valid names."""
    from rnlib import models

    h, w, c = dataset.image_shape
    try:  # convolutional models take the channel count; a residual MLP takes the flattened image size
        mlp = models.parse_name(config.model)["family"] == "mlp"
    except ValueError as e:
        raise ValueError(f"unknown model name {config.model!r}; {_model_names_hint()}") from e
    kw: dict[str, Any] = {"in_features": h * w * c if mlp else c}
    try:
        return models.build(config.model, dataset.num_classes, rngs, **kw, **config.model_kwargs)
    except ValueError as e:
        if config.model_kwargs:  # does the name alone build? then the keyword arguments were the problem
            try:
                nnx.eval_shape(lambda: models.build(config.model, dataset.num_classes, nnx.Rngs(0), **kw))
            except ValueError:
                pass
            else:
                raise
        raise ValueError(f"model {config.model!r}: {e}; {_model_names_hint()}") from e


def evaluate(state: TrainState, dataset: Any, split: str, eval_step: Callable, dp: DataParallel,
             batch_size: int) -> tuple[float, float]:
    """(accuracy, mean loss) over the whole split (the last batch zero-padded and masked out; images the input
    pipeline could not read are masked out too, with a warning)."""
    n = dataset.size(split)
    bs = batch_size - batch_size % dp.num_devices or dp.num_devices
    shard = (jax.process_index(), jax.process_count())
    sums = [eval_step(state, dp.put_batch(local, bs)) for local in dataset.eval_batches(split, bs, shard)]
    tot = jax.tree.map(lambda *x: float(np.sum(x)), *jax.device_get(sums))
    if tot["count"] < n:
        warnings.warn(f"{n - int(tot['count'])} unreadable images of the {split} split were left out of its "
                      "evaluation", RuntimeWarning, stacklevel=2)
    return tot["correct"] / max(tot["count"], 1), tot["loss_sum"] / max(tot["count"], 1)


def resolve(config: TrainConfig, train_size: int) -> tuple[int, float, str, int]:
    """(steps, lr, schedule name, warm-up steps) of `config` for a training set of `train_size` examples."""
    imagenet = config.data == "imagenet"
    per_epoch = max(1, train_size // config.batch_size)
    steps = round(config.epochs * per_epoch) if config.epochs is not None else config.steps
    if steps <= 0:
        raise ValueError(f"the run must have at least one step, got steps={steps} (epochs={config.epochs})")
    lr = config.lr if config.lr is not None else (0.1 * config.batch_size / 256 if imagenet else 0.1)
    schedule = config.schedule or ("imagenet" if imagenet else "paper")
    return steps, lr, schedule, round(config.warmup_epochs * per_epoch)


def fit(config: TrainConfig, *, model_fn: Callable[[Dataset, nnx.Rngs], nnx.Module] | None = None,
        dataset: Dataset | None = None) -> TrainResult:
    """Train as `config` says; write metrics.jsonl / final.json / curves.png into `config.out` if set.

    model_fn(dataset, rngs) overrides `config.model` (any NNX module mapping NHWC images to logits; it is
    called under jax.jit by `init_module`, so it must build from `rngs` without host-side values);
    `dataset` overrides `config.data`. Raises NonFiniteLossError (naming the step) if the loss becomes NaN/inf;
    checkpoints saved before that step are kept.
    """
    t_start = time.perf_counter()
    ds = dataset if dataset is not None else load_dataset(config.data, config.data_dir,
                                                          image_size=config.image_size, workers=config.workers)
    total_steps, lr, schedule_name, warmup_steps = resolve(config, ds.size("train"))
    dp = DataParallel(jax.devices()[:config.devices] if config.devices else None)
    dp.check_batch_size(config.batch_size)
    model = init_module((lambda r: model_fn(ds, r)) if model_fn is not None
                        else (lambda r: build_model(config, ds, r)), config.seed)
    horizon = config.schedule_steps or total_steps
    schedule = make_schedule(schedule_name, horizon, lr, warmup=config.warmup, warmup_steps=warmup_steps)
    tx = make_optimizer(config.optimizer, schedule, momentum=config.momentum, weight_decay=config.weight_decay)
    state = dp.replicate(create_train_state(model, tx, config.seed))
    # Every process computes the same global batch order and loads only its slice of each batch.
    loader = ds.train_loader(config.batch_size, config.seed, shard=(jax.process_index(), jax.process_count()))

    ckpt = Checkpointer(config.ckpt_dir, keep=config.ckpt_keep) if config.ckpt_dir else None
    elapsed_before, skipped = 0.0, 0
    if ckpt is not None and config.resume:
        restored = ckpt.restore_latest(state)
        if restored is not None:
            state, extra = restored
            loader.load_state_dict(extra["data"])
            elapsed_before = float(extra.get("elapsed_s", 0.0))
            skipped = int(extra.get("skipped_images", 0))
    start = int(state.step)
    norm = ds.input_norm
    train_step = make_train_step(config.precision, ds.augment if config.augment else None, parallel=dp,
                                 label_smoothing=config.label_smoothing, input_norm=norm)
    eval_step = make_eval_step(config.precision, parallel=dp, input_norm=norm)

    writes = bool(config.out) and jax.process_index() == 0  # multi-host: process 0 writes the run's files
    if writes:
        os.makedirs(config.out, exist_ok=True)
    log = MetricsLog(os.path.join(config.out, "metrics.jsonl"), start if start else None) if writes else None
    history: list[dict[str, Any]] = list(log.rows) if log else []
    progress = Progress(total_steps, start, config.quiet, f"{config.model} {ds.name}",
                        enabled=jax.process_index() == 0, print_every=config.print_every)
    t_run = time.perf_counter()

    def check_finite(s: TrainState) -> None:
        bad = int(s.bad_step)
        if bad >= 0:
            last = ckpt.latest_step() if ckpt is not None else None
            where = (f"the last good checkpoint is step {last} in {ckpt.directory}" if last is not None
                     else "no checkpoint was saved" if ckpt is not None else "checkpointing was off")
            raise NonFiniteLossError(bad, f"training stopped: the loss became non-finite (NaN/inf) at step {bad}; "
                                          f"{where}. Try a lower --lr or --precision f32.")

    # For the checkpoint's metadata; model_kwargs may hold non-JSON values (e.g. a dtype), kept as their str().
    config_json = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    pending: list[dict[str, jax.Array]] = []
    try:
        for step in range(start + 1, total_steps + 1):
            batch = dp.put_batch(loader.next_batch(), config.batch_size)
            if step == start + 1:
                progress.compiling()
            state, m = train_step(state, batch)
            pending.append(m)
            last = step == total_steps
            is_ckpt = ckpt is not None and (step % config.ckpt_every == 0 or last)
            is_eval = bool(config.eval_every) and (step % config.eval_every == 0 or last)
            if step % config.log_every == 0 or last or is_ckpt or is_eval:
                ms = jax.device_get(pending)
                pending = []
                check_finite(state)
                row = {"step": step, "loss": float(np.mean([x["loss"] for x in ms])),
                       "train_error": float(np.mean([x["error"] for x in ms])), "lr": float(schedule(step - 1)),
                       "time": round(elapsed_before + time.perf_counter() - t_start, 3)}
                new_skips = int(sum(x.get("skipped", 0) for x in ms))
                if new_skips:
                    warnings.warn(f"{new_skips} unreadable training image(s) skipped up to step {step} "
                                  f"({skipped + new_skips} in this run); each was replaced by the next image",
                                  RuntimeWarning, stacklevel=2)
                skipped += new_skips
                if skipped:
                    row["skipped_images"] = skipped
                if is_eval:
                    acc, _ = evaluate(state, ds, "test", eval_step, dp, config.eval_batch_size)
                    row["test_error"] = 1.0 - acc
                history.append(row)
                if log:
                    log.write(row)
                progress.update(step, row["loss"], row["train_error"],
                                f"  {skipped} images skipped" if skipped else "")
            if is_ckpt:
                ckpt.save(state, {"data": loader.state_dict(), "elapsed_s": elapsed_before + time.perf_counter()
                                  - t_start, "skipped_images": skipped, "config": config_json})
    finally:
        progress.close()
        loader.close()
        if ckpt is not None:
            ckpt.close()
    train_s = time.perf_counter() - t_run

    test_acc, test_loss = evaluate(state, ds, "test", eval_step, dp, config.eval_batch_size)
    train_err = None
    if config.final_train_eval:
        train_err = 1.0 - evaluate(state, ds, "train", eval_step, dp, config.eval_batch_size)[0]
    result = TrainResult(test_acc, train_err, int(state.step), params_sha256(state.params),
                         elapsed_before + time.perf_counter() - t_start, history, state)
    if writes:
        final = {**result.summary(), "test_loss": test_loss, "model": config.model, "data": ds.name,
                 "seed": config.seed, "precision": config.precision, "devices": dp.num_devices,
                 "train_loop_s": train_s, "resumed_from_step": start or None, "skipped_images": skipped}
        write_json(os.path.join(config.out, "final.json"), final)
        if history:
            plot_curves(history, os.path.join(config.out, "curves.png"), f"{config.model} on {ds.name}",
                        final_test_error=1.0 - test_acc)
    return result
