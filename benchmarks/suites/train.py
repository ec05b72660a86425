"""Train suite: examples/s of whole train steps, rnlib vs reference code, timed round-robin in one run.

* ResNet-20/56/110 on a synthetic CIFAR-shaped batch (B, 32, 32, 3), float32, SGD momentum 0.9 + weight decay:
  rnlib = ``rnlib.models.build("resnetN", shortcut="B")`` (projection shortcuts, like the reference) stepped by
  ``rnlib.train.make_train_step``; rnlib_unrolled = the same with ``scan=False`` (XLA:CPU has run convolutions
  inside a while loop far slower, jax-ml/jax#12868, which this pair keeps an eye on); reference_linen = ``benchmarks/reference/resnet_linen.py`` (the Flax ImageNet
  example's modules and train step); torch = the same network in eager PyTorch when torch is installed.
* A transformer-style pre-norm residual MLP stack on tokens (B, T, d): rnlib = the stack on ``rnlib.linen.AddNorm``
  (fused residual add + layer norm) vs reference_linen = the same stack on ``flax.linen.LayerNorm`` + add.

Records: pass "fwd+bwd" (a whole step), time_s = median step seconds, images_per_s = batch / time_s, plus
compile_s (lower + compile of the step) and params; gbps / frac_of_copy are None (no copy yardstick for a model).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import harness
from benchmarks.suites import norms_torch
from benchmarks.suites.tasks import Task

Candidate = tuple[Callable[[], Any], Callable[[Any], Any], float, int]  # (call, sync, compile_s, params)


def _param_count(tree: Any) -> int:
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))


def _threaded(compiled: Any, state: Any, batch: Any) -> Callable[[], Any]:
    """A zero-argument step that feeds each new state back in (the steps donate their state)."""
    box = [state]

    def call():
        box[0], metrics = compiled(box[0], batch)
        return metrics
    return call


def cifar_batch(batch: int, seed: int = 0) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"image": jax.random.normal(k1, (batch, 32, 32, 3), jnp.float32),
            "label": jax.random.randint(k2, (batch,), 0, 10, jnp.int32)}


def rnlib_resnet(depth: int, batch: dict, **model_kw: Any) -> Candidate:
    from flax import nnx

    from rnlib.models import build
    from rnlib.train import create_train_state, make_optimizer, make_train_step

    model = build(f"resnet{depth}", 10, nnx.Rngs(0), **{"shortcut": "B", **model_kw})
    state = create_train_state(model, make_optimizer("sgd", 0.1, momentum=0.9, weight_decay=1e-4), seed=0)
    compiled, secs = harness.compile_seconds(make_train_step("f32"), state, batch)
    return _threaded(compiled, state, batch), jax.block_until_ready, secs, _param_count(state.params)


def reference_resnet(depth: int, batch: dict) -> Candidate:
    from benchmarks.reference import resnet_linen as ref

    state = ref.create_train_state(ref.cifar_resnet(depth), jax.random.key(0), batch["image"].shape)
    compiled, secs = harness.compile_seconds(jax.jit(ref.train_step, donate_argnums=0), state, batch)
    return _threaded(compiled, state, batch), jax.block_until_ready, secs, _param_count(state.params)


def torch_resnet(depth: int, batch: dict) -> Candidate:
    from benchmarks.reference import resnet_torch

    step = resnet_torch.make_step(depth, batch["image"].shape[0])
    n = sum(p.numel() for p in resnet_torch.ResNet(depth).parameters())
    return step, (lambda _: None), 0.0, n


def stack_candidate(fused: bool, depth: int, features: int, tokens: tuple[int, int]) -> tuple[Candidate, dict]:
    from benchmarks.reference.residual_stack import PreNormStack

    add_norm = None
    if fused:
        from rnlib.linen import AddNorm
        add_norm = AddNorm
    model = PreNormStack(depth=depth, features=features, add_norm=add_norm)
    k1, k2 = jax.random.split(jax.random.key(1))
    batch = {"image": jax.random.normal(k1, tokens + (features,), jnp.float32),
             "label": jax.random.randint(k2, (tokens[0],), 0, 10, jnp.int32)}
    params = model.init(jax.random.key(0), batch["image"][:1])["params"]
    tx = optax.sgd(0.1, momentum=0.9)

    def step(state, b):
        p, opt = state
        loss, g = jax.value_and_grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, b["image"]),
                                                                      b["label"]).mean())(p)
        upd, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, upd), opt), {"loss": loss}

    state = (params, tx.init(params))
    compiled, secs = harness.compile_seconds(jax.jit(step, donate_argnums=0), state, batch)
    return (_threaded(compiled, state, batch), jax.block_until_ready, secs, _param_count(params)), batch


def measure_models(name: str, cands: dict[str, Callable[[], Candidate]], shape: tuple, timing: dict) -> list[dict]:
    """Build (and compile) every candidate, time them round-robin, return one record per implementation."""
    built, errors = {}, {}
    for impl, make in cands.items():
        try:
            built[impl] = make()
        except Exception as e:  # noqa: BLE001 -- a missing peer must not stop the suite
            errors[impl] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    times = harness.time_interleaved({k: (c[0], (), c[1]) for k, c in built.items()}, **timing)
    recs = []
    for impl in cands:
        t = times.get(impl)
        extra: dict[str, Any] = {"batch": shape[0], "images_per_s": shape[0] / t if t else None}
        if impl in built:
            extra.update(compile_s=built[impl][2] if impl != "torch" else None, params=built[impl][3])
        else:
            extra["error"] = errors[impl]
        recs.append(harness.make_record("train", name, impl, shape, jnp.float32, "fwd+bwd", t, **extra))
    return recs


def resnet_task(depth: int, batch_size: int, timing: dict, with_torch: bool = True) -> list[dict]:
    batch = cifar_batch(batch_size)
    cands: dict[str, Callable[[], Candidate]] = {
        "rnlib": functools.partial(rnlib_resnet, depth, batch),
        "rnlib_unrolled": functools.partial(rnlib_resnet, depth, batch, scan=False),
        "reference_linen": functools.partial(reference_resnet, depth, batch)}
    if with_torch and norms_torch.available():
        cands["torch"] = functools.partial(torch_resnet, depth, batch)
    return measure_models(f"resnet{depth}", cands, batch["image"].shape, timing)


def stack_task(depth: int, features: int, tokens: tuple[int, int], timing: dict) -> list[dict]:
    cands = {"rnlib": lambda: stack_candidate(True, depth, features, tokens)[0],
             "reference_linen": lambda: stack_candidate(False, depth, features, tokens)[0]}
    return measure_models(f"prenorm_mlp{depth}_d{features}", cands, tokens + (features,), timing)


def default_plan(quick: bool) -> list[Task]:
    """Quick: ResNet-20 at batch 32 and a small stack on CPU (ResNet-20/56 at batch 128 on accelerators); full:
    ResNet-20/56/110 at batch 128 and a larger stack."""
    accel = harness.platform() != "cpu"
    if quick and not accel:
        depths, batch, timing = (20,), 32, {"warmup": 1, "min_runs": 3, "max_runs": 5, "target_s": 0.5}
        stack = (4, 256, (8, 128))
    elif quick:
        depths, batch, timing = (20, 56), 128, {"warmup": 2, "min_runs": 5, "max_runs": 50, "target_s": 1.0}
        stack = (12, 1024, (32, 512))
    else:
        depths, batch, timing = (20, 56, 110), 128, {"warmup": 2, "min_runs": 5, "max_runs": 50, "target_s": 3.0}
        stack = (8, 512, (16, 256)) if not accel else (12, 1024, (32, 512))
    tasks = [Task(f"resnet{d} batch {batch}", functools.partial(resnet_task, d, batch, timing)) for d in depths]
    tasks.append(Task(f"prenorm_mlp{stack[0]}_d{stack[1]}", functools.partial(stack_task, *stack, timing)))
    return tasks
