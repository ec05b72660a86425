"""Learning-rate schedules and optimizers (optax).

The default is the CIFAR recipe of He et al. (2015), section 4.2: SGD, momentum 0.9, weight decay 1e-4
(L2, added to the gradient as in Caffe/PyTorch), batch 128, lr 0.1 divided by 10 at 32k and 48k iterations,
stop at 64k; ResNet-110 first warms up at lr 0.01 for ~400 iterations. Shorter runs keep the same *fractions*
(boundaries at 50 % and 75 % of the run, warm-up 400/64000 of it).

The ImageNet recipe of the same paper (sec. 3.4) is "imagenet": lr 0.1 x batch/256 divided by 10 at epochs 30 and
60 of 90, i.e. at 1/3 and 2/3 of the horizon. The Flax ImageNet example's alternative is "cosine" with a linear
warm-up from 0 over `warmup_steps` (5 epochs there), usually with label smoothing (a loss option, not here).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp
import optax

PAPER_STEPS = 64_000
PAPER_BOUNDARIES = (32_000, 48_000)
PAPER_WARMUP = 400

SCHEDULES = ("paper", "imagenet", "cosine", "constant")
IMAGENET_BOUNDARIES = (1 / 3, 2 / 3)  # epochs 30 and 60 of 90
OPTIMIZERS = ("sgd", "adam", "adamw")


@functools.lru_cache(maxsize=128)
def paper_schedule(
    total_steps: int = PAPER_STEPS,
    base_lr: float = 0.1,
    *,
    warmup: bool = False,
    warmup_lr: float = 0.01,
) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Step schedule lr(count) for `count` = number of updates already applied (0-based).

    lr = base_lr for count < b1, base_lr/10 for b1 <= count < b2, base_lr/100 afterwards, with
    b1, b2 = round(total * (1/2, 3/4)); with `warmup`, lr = warmup_lr for count < max(1, round(total*400/64000)).
    At total_steps=64000 this is exactly the paper's 32k/48k (and 400) boundaries.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    frac = total_steps / PAPER_STEPS
    b1, b2 = (round(b * frac) for b in PAPER_BOUNDARIES)
    w = max(1, round(PAPER_WARMUP * frac)) if warmup else 0

    def schedule(count):
        count = jnp.asarray(count)
        lr = jnp.where(count < b1, base_lr, base_lr * 0.1)
        lr = jnp.where(count < b2, lr, base_lr * 0.01)
        if w:
            lr = jnp.where(count < w, warmup_lr, lr)
        return lr.astype(jnp.float32)

    schedule.boundaries = (b1, b2)  # type: ignore[attr-defined]
    schedule.warmup_steps = w  # type: ignore[attr-defined]
    return schedule


@functools.lru_cache(maxsize=128)
def make_schedule(
    name: str,
    total_steps: int,
    base_lr: float,
    *,
    warmup: bool = False,
    warmup_lr: float = 0.01,
    warmup_steps: int = 0,
) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """"paper" (step decay above), "imagenet" (lr/10 at 1/3 and 2/3 of `total_steps`), "cosine" (optax cosine
    decay to 0, linear warm-up from `warmup_lr` over the paper's warm-up fraction when `warmup`), or "constant".

    `warmup_steps` > 0 (instead of `warmup`): lr rises linearly from 0 to `base_lr` over the first `warmup_steps`
    updates (Goyal et al. 2017; the Flax ImageNet example), then follows the schedule (cosine: over the rest)."""
    if total_steps <= 0:
        raise ValueError(f"the schedule horizon must be a positive number of steps, got {total_steps}")
    if warmup_steps < 0 or (warmup_steps and warmup):
        raise ValueError(f"warmup_steps must be >= 0 and not combined with warmup, got {warmup_steps}, {warmup}")
    if warmup_steps:
        if name == "cosine":
            return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup_steps, max(total_steps, warmup_steps + 1))
        after = make_schedule(name, total_steps, base_lr)
        ramp = optax.linear_schedule(0.0, base_lr, warmup_steps)
        return lambda count: jnp.where(jnp.asarray(count) < warmup_steps, ramp(count), after(count))
    if name == "paper":
        return paper_schedule(total_steps, base_lr, warmup=warmup, warmup_lr=warmup_lr)
    if name == "imagenet":
        b1, b2 = (round(f * total_steps) for f in IMAGENET_BOUNDARIES)
        return lambda count: (base_lr * jnp.where(jnp.asarray(count) < b1, 1.0, 0.1)
                              * jnp.where(jnp.asarray(count) < b2, 1.0, 0.1)).astype(jnp.float32)
    if name == "cosine":
        w = max(1, round(PAPER_WARMUP * total_steps / PAPER_STEPS)) if warmup else 0
        if w:
            return optax.warmup_cosine_decay_schedule(warmup_lr, base_lr, w, max(total_steps, w + 1))
        return optax.cosine_decay_schedule(base_lr, max(total_steps, 1))
    if name == "constant":
        return optax.constant_schedule(base_lr)
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")


@functools.lru_cache(maxsize=128)
def make_optimizer(
    name: str,
    schedule: Callable | float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """Cached on its arguments (like make_schedule), so equal configs give the same object and a jitted step
    compiled for it is reused.

    "sgd": g + wd*w then heavy-ball momentum (PyTorch/Caffe SGD, the paper's recipe);
    "adam": Adam on g + wd*w (coupled L2); "adamw": decoupled weight decay (Loshchilov & Hutter)."""
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(weight_decay),
            optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov),
        )
    if name == "adam":
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(schedule))
    if name == "adamw":
        return optax.adamw(schedule, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
