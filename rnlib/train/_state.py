"""Train state as a pure pytree and the jit-compiled train / eval steps.

An NNX model is split once into a static `GraphDef` and two pure dicts of arrays: `params` (nnx.Param) and
`model_state` (everything else, e.g. BatchNorm running statistics). The steps merge them back inside the jitted
function, so the compiled computation is the same as a hand-written `jax.jit` over the model.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rnlib.train._data import Augment, augment_batch

PRECISIONS = ("f32", "bf16")


@flax.struct.dataclass
class TrainState:
    """step (int32), params / model_state (pure dicts), opt_state (optax), rng (uint32[2] raw key data),
    bad_step (int32: first step whose loss was non-finite, -1 while all were finite).

    `graphdef` (train mode), `eval_graphdef` (eval mode) and `tx` are static: part of the tree structure.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    rng: jax.Array
    bad_step: jax.Array
    graphdef: Any = flax.struct.field(pytree_node=False)
    eval_graphdef: Any = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    def model(self, train: bool = False) -> nnx.Module:
        """The NNX module with these arrays (eval mode unless `train`)."""
        return nnx.merge(self.graphdef if train else self.eval_graphdef, self.params, self.model_state)

    def arrays(self) -> dict[str, Any]:
        """The array part (what a checkpoint holds)."""
        return {"step": self.step, "params": self.params, "model_state": self.model_state,
                "opt_state": self.opt_state, "rng": self.rng, "bad_step": self.bad_step}


def init_module(factory: Callable[[nnx.Rngs], nnx.Module], seed: int) -> nnx.Module:
    """`factory(nnx.Rngs(seed))`, with all initialisers run as one jitted program.

    Eager construction compiles every initialiser op separately (a CIFAR ResNet: ~1 min on a busy 2-core CPU);
    one program compiled with XLA's cheap backend settings takes seconds, and the init runs only once.
    """
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: factory(nnx.Rngs(seed))))
    lowered = jax.jit(lambda: nnx.split(factory(nnx.Rngs(seed)))[1]).lower()
    compiled = None
    if jax.default_backend() == "cpu":
        try:
            compiled = lowered.compile(
                compiler_options={"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
        except Exception:  # an XLA without these options: fall back to the default pipeline
            compiled = None
    state = (compiled if compiled is not None else lowered.compile())()
    return nnx.merge(graphdef, state)


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Split `model` into a state holding *copies* of its arrays (the train step donates the state, which must
    not delete the caller's model) and initialise `tx` on the parameters. `model` is left in train mode."""
    model.eval()
    eval_graphdef = nnx.graphdef(model)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = jax.tree.map(jnp.copy, (nnx.to_pure_dict(params), nnx.to_pure_dict(rest)))
    return TrainState(
        step=jnp.asarray(0, jnp.int32), params=params, model_state=rest, opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)), bad_step=jnp.asarray(-1, jnp.int32),
        graphdef=graphdef, eval_graphdef=eval_graphdef, tx=tx)


def _cast_floats(tree: Any, dtype) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _forward(graphdef, params, model_state, image, precision: str):
    """logits (float32) and the model state after the call (BatchNorm statistics updated in train mode).

    bf16: parameters and input are cast to bfloat16 for the computation (master params stay float32, the
    cast's VJP returns float32 gradients); model_state (running statistics) stays float32.
    """
    if precision == "bf16":
        params, image = _cast_floats(params, jnp.bfloat16), image.astype(jnp.bfloat16)
    elif precision != "f32":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model = nnx.merge(graphdef, params, model_state)
    logits = model(image).astype(jnp.float32)
    _, _, new_state = nnx.split(model, nnx.Param, ...)
    new_state = nnx.to_pure_dict(new_state)
    # Keep the state dtypes fixed from step to step (a bf16 computation must not downcast running stats).
    new_state = jax.tree.map(
        lambda n, o: n.astype(o.dtype) if jnp.issubdtype(o.dtype, jnp.floating) else n, new_state, model_state)
    return logits, new_state


InputNorm = tuple[tuple[float, ...], tuple[float, ...]]


def normalize_input(image: jax.Array, input_norm: InputNorm | None) -> jax.Array:
    """uint8 pixels -> float32 (x / 255 - mean) / std per channel when `input_norm` = (mean, std) is given
    (images travel to the device as uint8: a quarter of float32's traffic); otherwise `image` unchanged."""
    if input_norm is None:
        return image
    mean, std = (jnp.asarray(v, jnp.float32) for v in input_norm)
    return (image.astype(jnp.float32) / 255.0 - mean) / std


def _xent(logits: jax.Array, label: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """Per-example softmax cross-entropy; with `smoothing` e the target is (1 - e) one_hot + e / classes."""
    if not smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, label)
    target = optax.smooth_labels(jax.nn.one_hot(label, num_classes, dtype=logits.dtype), smoothing)
    return optax.softmax_cross_entropy(logits, target)


def train_step_fn(precision: str = "f32", augment: Augment | None = None, label_smoothing: float = 0.0,
                  input_norm: InputNorm | None = None) -> Callable:
    """The pure (un-jitted) step: (state, batch) -> (state, metrics).

    batch: {"image": float32 (B, H, W, C) (uint8 with `input_norm`, see `normalize_input`), "label": int32 (B,),
    optionally "skipped": int32 (B,), unreadable images the input pipeline passed over}.
    Loss = mean softmax cross-entropy (float32), against smoothed targets when `label_smoothing` > 0.
    Augmentation, when given, uses the key fold_in(state.rng, state.step), so it is a function of the step alone.
    metrics: {"loss", "error"} float32 scalars (batch mean; error against the hard labels), plus "skipped"
    (the batch's sum) when the batch has it.
    """

    def step(state: TrainState, batch: dict[str, jax.Array]):
        image, label = normalize_input(batch["image"], input_norm), batch["label"]
        if augment is not None:
            key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
            image = augment_batch(key, image, augment)

        def loss_fn(params):
            logits, new_state = _forward(state.graphdef, params, state.model_state, image, precision)
            loss = _xent(logits, label, logits.shape[-1], label_smoothing).mean()
            return loss, (logits, new_state)

        (loss, (logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        bad = jnp.where((state.bad_step < 0) & ~jnp.isfinite(loss), state.step + 1, state.bad_step)
        error = jnp.mean((jnp.argmax(logits, -1) != label).astype(jnp.float32))
        new = state.replace(step=state.step + 1, params=params, model_state=new_state, opt_state=opt_state,
                            bad_step=bad)
        metrics = {"loss": loss, "error": error}
        if "skipped" in batch:
            metrics["skipped"] = jnp.sum(batch["skipped"])
        return new, metrics

    return step


@functools.lru_cache(maxsize=64)
def make_train_step(
    precision: str = "f32",
    augment: Augment | None = None,
    *,
    parallel: Any = None,
    donate: bool = True,
    label_smoothing: float = 0.0,
    input_norm: InputNorm | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """jax.jit-compiled `train_step_fn(precision, augment, label_smoothing, input_norm)`, the state donated.

    `parallel` (a `rnlib.train._sharding.DataParallel`) pins the shardings: state replicated, batch split over
    the mesh's data axis, metrics replicated; without it jit follows the inputs' shardings. Cached on the
    arguments, so repeated runs in one process (same model and optimizer objects) reuse the compiled step.
    `bad_step` counts steps 1-based: the step whose update produced the non-finite loss.
    """
    kw: dict[str, Any] = {"donate_argnums": (0,) if donate else ()}
    if parallel is not None:  # one sharding is a pytree prefix for the whole state
        kw["in_shardings"] = (parallel.replicated, parallel.batch_sharding)
        kw["out_shardings"] = (parallel.replicated, parallel.replicated)
    return jax.jit(train_step_fn(precision, augment, label_smoothing, input_norm), **kw)


def eval_step_fn(precision: str = "f32", input_norm: InputNorm | None = None) -> Callable:
    """(state, batch) -> {"correct", "loss_sum", "count"} over the examples with batch["mask"] == 1 (eval mode)."""

    def step(state: TrainState, batch: dict[str, jax.Array]):
        image = normalize_input(batch["image"], input_norm)
        logits, _ = _forward(state.eval_graphdef, state.params, state.model_state, image, precision)
        mask = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32)).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {"correct": jnp.sum(correct * mask), "loss_sum": jnp.sum(loss * mask), "count": jnp.sum(mask)}

    return step


@functools.lru_cache(maxsize=64)
def make_eval_step(precision: str = "f32", *, parallel: Any = None, input_norm: InputNorm | None = None) -> Callable:
    """jax.jit-compiled `eval_step_fn` (no donation: the state is reused); shardings as in make_train_step."""
    kw: dict[str, Any] = {}
    if parallel is not None:
        kw["in_shardings"] = (parallel.replicated, parallel.batch_sharding)
        kw["out_shardings"] = parallel.replicated
    return jax.jit(eval_step_fn(precision, input_norm), **kw)


def params_sha256(params: Any) -> str:
    """SHA-256 over the parameters' raw bytes, leaves in sorted key-path order (a reproducibility fingerprint)."""
    import hashlib

    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.asarray(jax.device_get(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
