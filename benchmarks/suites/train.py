"""Train suite: examples/s of whole train steps, rnlib vs reference code, timed round-robin in one run.

* ResNet-20/56/110 on a synthetic CIFAR-shaped batch (B, 32, 32, 3), float32, SGD momentum 0.9 + weight decay:
  rnlib = ``rnlib.models.build("resnetN", shortcut="B")`` (projection shortcuts, like the reference) stepped by
  ``rnlib.train.make_train_step``; rnlib_unrolled = the same with ``scan=False`` (XLA:CPU has run convolutions
  inside a while loop far slower, jax-ml/jax#12868, which this pair keeps an eye on); reference_linen = ``benchmarks/reference/resnet_linen.py`` (the Flax ImageNet
  example's modules and train step); torch = the same network in eager PyTorch when torch is installed.
* ResNet-50 (v1.5, ImageNet layout, 1000 classes) on a synthetic NHWC batch (B, S, S, 3), SGD with Nesterov
  momentum 0.9 + weight decay 1e-4, BatchNorm statistics updated, in float32 ("resnet50") and mixed precision
  ("resnet50_bf16": bfloat16 compute, float32 parameters, optimizer state and loss): rnlib =
  ``rnlib.models.build("resnet50", 1000)`` stepped by ``make_train_step("f32" | "bf16")`` (rnlib_unrolled: scan=False);
  reference_linen = the Flax ImageNet example's ResNet50 and train step (``dtype=bfloat16`` for mixed precision; its
  L2 penalty skips BatchNorm parameters, rnlib's and torch's weight decay does not: 53k of 25.6M weights);
  torch = torchvision's ResNet-50 (``benchmarks/reference/torchvision_resnet.py``), channels-last, under
  ``torch.compile`` when it compiles (else eager; ``torch_mode`` says which and why), ``torch.autocast`` bfloat16.
  Full size: S = 224 (batch 256 on an accelerator, 32 on a CPU); ``--quick`` on a CPU: S = 64, batch 8.
* A transformer-style pre-norm residual MLP stack on tokens (B, T, d): rnlib = the stack on ``rnlib.linen.AddNorm``
  (fused residual add + layer norm) vs reference_linen = the same stack on ``flax.linen.LayerNorm`` + add.

Records: pass "fwd+bwd" (a whole step), time_s = median step seconds, images_per_s = batch / time_s, plus
compile_s (lower + compile of the step) and params; gbps / frac_of_copy are None (no copy yardstick for a model).
ResNet-50 records add precision, image_size, and memory: ``step_bytes`` = XLA's own account of the compiled step
(``memory_analysis()``: arguments + outputs - donated aliases + temporaries; the same on every backend, None for
torch), ``peak_bytes`` = the device's peak as its runtime reports it (jax ``memory_stats()["peak_bytes_in_use"]``
after the task, a process-wide peak; ``torch.cuda.max_memory_allocated`` per candidate) or None where the backend
gives none (CPU), ``peak_bytes_source`` says which. torch's compile_s is its first step (tracing + compiling).
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

# (call, sync, compile_s, params[, extra record fields])
Candidate = tuple[Callable[[], Any], Callable[[Any], Any], float, int] | tuple[Callable[[], Any], Callable[[Any], Any],
                                                                                float, int, dict]


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


def imagenet_batch(batch: int, size: int, seed: int = 0) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"image": jax.random.normal(k1, (batch, size, size, 3), jnp.float32),
            "label": jax.random.randint(k2, (batch,), 0, 1000, jnp.int32)}


def _step_bytes(compiled: Any) -> int | None:
    """XLA's memory account of one compiled step: arguments + outputs - donated aliases + temporaries."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 -- a backend without the analysis
        return None


def numpy_init(abstract: Any, seed: int = 0) -> Any:
    """Fill an abstract (``nnx.eval_shape``) rnlib ResNet with its initial distribution drawn by NumPy: He-normal
    (fan-out) convolution kernels, LeCun-normal classifier, unit scales and variances, zero biases and means.

    Timing does not depend on the draws; running rnlib's initialisers instead compiles a program of ~25M random
    draws first, which took longer than the benchmark itself on a loaded 2-core CPU.
    """
    from flax import nnx

    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def leaf(path: tuple, a: Any) -> np.ndarray:
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel" and a.ndim >= 4:  # HWIO, maybe stacked: std = sqrt(2 / (kh * kw * out))
            std = np.sqrt(2.0 / (a.shape[-4] * a.shape[-3] * a.shape[-1]))
        elif name == "kernel":
            std = 1.0 / np.sqrt(a.shape[-2])
        else:
            return np.full(a.shape, 1.0 if name in ("scale", "var") else 0.0, a.dtype)
        return (rng.standard_normal(a.shape, np.float32) * np.float32(std)).astype(a.dtype)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(leaf, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


def rnlib_resnet50(precision: str, batch: dict, **model_kw: Any) -> Candidate:
    from flax import nnx

    from rnlib.models import build
    from rnlib.train import create_train_state, make_optimizer, make_train_step

    model = numpy_init(nnx.eval_shape(lambda: build("resnet50", 1000, nnx.Rngs(0), **model_kw)))
    tx = make_optimizer("sgd", 0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    state = create_train_state(model, tx, seed=0)
    compiled, secs = harness.compile_seconds(make_train_step(precision), state, batch)
    return (_threaded(compiled, state, batch), jax.block_until_ready, secs, _param_count(state.params),
            {"step_bytes": _step_bytes(compiled)})


def reference_resnet50(precision: str, batch: dict) -> Candidate:
    from benchmarks.reference import resnet_linen as ref

    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    state = ref.create_train_state(ref.imagenet_resnet(50, dtype=dtype), jax.random.key(0), batch["image"].shape)
    compiled, secs = harness.compile_seconds(jax.jit(ref.train_step, donate_argnums=0), state, batch)
    return (_threaded(compiled, state, batch), jax.block_until_ready, secs, _param_count(state.params),
            {"step_bytes": _step_bytes(compiled)})


def torch_resnet50(precision: str, batch: dict, compile: bool = True) -> Candidate:
    import time

    import torch

    from benchmarks.reference import torchvision_resnet as tv

    device = "cuda" if harness.platform() == "gpu" and torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    n, size = batch["image"].shape[0], batch["image"].shape[1]
    t0 = time.perf_counter()
    step, mode = tv.make_step(50, n, size, bf16=precision == "bf16", compile=compile, device=device)
    secs = time.perf_counter() - t0 if mode == "compiled" else None
    sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
    step(), sync(None)
    extra = {"torch_mode": mode, "step_bytes": None,
             "peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
             "peak_bytes_source": "torch.cuda.max_memory_allocated" if device == "cuda" else "none (cpu)"}
    return step, sync, secs, sum(p.numel() for p in tv.ResNet(50).parameters()), extra


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


def measure_models(name: str, cands: dict[str, Callable[[], Candidate]], shape: tuple, timing: dict,
                   dtype: Any = jnp.float32, **common: Any) -> list[dict]:
    """Build (and compile) every candidate, time them round-robin, return one record per implementation
    (``common`` goes into every record; a candidate's own extra fields override it)."""
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
        extra: dict[str, Any] = {"batch": shape[0], "images_per_s": shape[0] / t if t else None, **common}
        if impl in built:
            c = built[impl]
            extra.update(compile_s=c[2] if impl != "torch" or len(c) > 4 else None, params=c[3])
            extra.update(c[4] if len(c) > 4 else {})
        else:
            extra["error"] = errors[impl]
        recs.append(harness.make_record("train", name, impl, shape, dtype, "fwd+bwd", t, **extra))
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


def _device_peak() -> dict[str, Any]:
    """The jax device's peak bytes in use so far (GPU/TPU runtimes report it; the CPU client does not)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001
        stats = {}
    if "peak_bytes_in_use" in stats:
        return {"peak_bytes": int(stats["peak_bytes_in_use"]),
                "peak_bytes_source": "jax memory_stats peak_bytes_in_use (process peak after this task)"}
    return {"peak_bytes": None, "peak_bytes_source": f"none ({harness.platform()} backend reports no memory_stats)"}


def resnet50_task(precision: str, batch_size: int, size: int, timing: dict, with_torch: bool = True,
                  unrolled: bool = True, torch_compile: bool = True) -> list[dict]:
    """ResNet-50 train steps at one precision: rnlib (scanned stages; unrolled too when ``unrolled``), the Flax
    example, torchvision's in torch; one record each, named "resnet50" (float32) or "resnet50_bf16"."""
    batch = imagenet_batch(batch_size, size)
    cands: dict[str, Callable[[], Candidate]] = {"rnlib": functools.partial(rnlib_resnet50, precision, batch)}
    if unrolled:
        cands["rnlib_unrolled"] = functools.partial(rnlib_resnet50, precision, batch, scan=False)
    cands["reference_linen"] = functools.partial(reference_resnet50, precision, batch)
    if with_torch and norms_torch.available():
        cands["torch"] = functools.partial(torch_resnet50, precision, batch, torch_compile)
    name = "resnet50" if precision == "f32" else "resnet50_bf16"
    precision_words = "float32" if precision == "f32" else "bfloat16 compute, float32 params/optimizer/loss"
    recs = measure_models(name, cands, batch["image"].shape, timing,
                          jnp.float32 if precision == "f32" else jnp.bfloat16,
                          precision=precision_words, image_size=size)
    peak = _device_peak()
    for r in recs:
        if r["impl"] != "torch":
            r.update(peak)
    return recs


def stack_task(depth: int, features: int, tokens: tuple[int, int], timing: dict) -> list[dict]:
    cands = {"rnlib": lambda: stack_candidate(True, depth, features, tokens)[0],
             "reference_linen": lambda: stack_candidate(False, depth, features, tokens)[0]}
    return measure_models(f"prenorm_mlp{depth}_d{features}", cands, tokens + (features,), timing)


def default_plan(quick: bool) -> list[Task]:
    """Quick: ResNet-20 at batch 32, a small stack and ResNet-50 at batch 8 x 64x64 on CPU (ResNet-20/56 at batch
    128 and ResNet-50 at batch 128 x 224x224 on accelerators); full: ResNet-20/56/110 at batch 128, a larger stack,
    ResNet-50 at 224x224 (batch 32 on a CPU, 256 on an accelerator). ResNet-50 runs in float32 and bf16."""
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
    # ResNet-50 at quick CPU sizes: compiles dominate (measured on 2 cores: rnlib ~45 s, reference ~55 s of CPU
    # time per precision, steps ~1 s each); torch.compile on a CPU adds minutes of C++ compilation, so quick CPU
    # runs time torch eagerly (its record's torch_mode says so).
    if quick and not accel:
        r50 = dict(batch_size=8, size=64, unrolled=False, torch_compile=False,
                   timing={"warmup": 1, "min_runs": 3, "max_runs": 7, "target_s": 1.0})
    elif not accel:
        r50 = dict(batch_size=32, size=224, timing=timing)
    else:
        r50 = dict(batch_size=128 if quick else 256, size=224, timing=timing)
    for precision in ("f32", "bf16"):
        tasks.append(Task(f"resnet50 {precision} batch {r50['batch_size']} {r50['size']}x{r50['size']}",
                          functools.partial(resnet50_task, precision, **r50)))
    tasks.append(Task(f"prenorm_mlp{stack[0]}_d{stack[1]}", functools.partial(stack_task, *stack, timing)))
    return tasks
