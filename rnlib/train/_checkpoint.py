"""Checkpoints with orbax-checkpoint's CheckpointManager.

A checkpoint holds every array of the TrainState (params, model_state, optimizer state, step, RNG, bad_step)
plus JSON metadata (data-loader position, elapsed time, config, and a SHA-256 fingerprint of the arrays).
orbax writes each step into a temporary directory and renames it when complete, so a process killed mid-save
(even SIGKILL) leaves only a temporary directory that is never restored. On restore, a checkpoint that fails to
read or whose arrays do not match the fingerprint is skipped with a warning and the previous one is used.
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from rnlib.train._state import TrainState


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _flatten(arrays: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Flat {"a000000": array} (simple names for orbax) and the key paths, in tree order. Typed PRNG keys are
    stored as their raw key data."""
    leaves = jax.tree_util.tree_flatten_with_path(arrays)[0]
    flat = {f"a{i:06d}": (jax.random.key_data(v) if _is_key(v) else v) for i, (_, v) in enumerate(leaves)}
    return flat, [jax.tree_util.keystr(p) for p, _ in leaves]


def fingerprint(flat: dict[str, Any]) -> str:
    """SHA-256 over the flat arrays' bytes (keys sorted)."""
    h = hashlib.sha256()
    for k in sorted(flat):
        a = np.asarray(jax.device_get(flat[k]))
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class CheckpointCorrupt(ValueError):
    """A checkpoint directory was readable but does not hold what was saved."""


class Checkpointer:
    """Keeps the last `keep` checkpoints of a run in `directory` (saving is synchronous by default: the train
    step donates the state's buffers right after, and these models are small enough that it costs little)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = False):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True, enable_async_checkpointing=async_save)
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, state: TrainState, extra: dict[str, Any]) -> None:
        """Save `state` at its step with JSON-serialisable `extra` (e.g. the loader position)."""
        flat, paths = _flatten(state.arrays())
        meta = {"step": int(state.step), "fingerprint": fingerprint(flat), "paths": paths, "extra": extra}
        self._mngr.save(int(state.step), force=True,
                        args=ocp.args.Composite(state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)))

    def _restore_step(self, step: int, template: TrainState) -> tuple[TrainState, dict[str, Any]]:
        arrays = template.arrays()
        tflat, paths = _flatten(arrays)
        abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=getattr(v, "sharding", None))
                    for k, v in tflat.items()}
        got = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        meta, flat = got["meta"], got["state"]
        if meta is None or meta.get("paths") != paths:
            raise CheckpointCorrupt(f"step {step}: the saved arrays' structure does not match this model/optimizer")
        if meta.get("step") != step or fingerprint(flat) != meta.get("fingerprint"):
            raise CheckpointCorrupt(f"step {step}: array contents do not match the saved SHA-256 fingerprint")
        leaves, treedef = jax.tree_util.tree_flatten(arrays)
        restored = [jax.random.wrap_key_data(flat[k], impl=jax.random.key_impl(t)) if _is_key(t) else flat[k]
                    for k, t in zip(sorted(flat), leaves)]
        return template.replace(**jax.tree_util.tree_unflatten(treedef, restored)), meta["extra"]

    def restore_latest(self, template: TrainState) -> tuple[TrainState, dict[str, Any]] | None:
        """The newest readable checkpoint as (state, extra), shaped and sharded like `template`; None if there is
        none. Unreadable or corrupt checkpoints are skipped with a warning (newest first)."""
        self._mngr.reload()
        bad = []
        try:
            for step in reversed(self.all_steps()):
                try:
                    return self._restore_step(step, template)
                except Exception as e:  # orbax/tensorstore raise many types for damaged files
                    bad.append(step)
                    warnings.warn(f"checkpoint at step {step} in {self.directory} is unreadable or corrupt "
                                  f"({type(e).__name__}: {str(e)[:300]}); falling back to the previous one "
                                  f"(the damaged one is moved to {self.directory}/corrupt/)",
                                  RuntimeWarning, stacklevel=2)
            return None
        finally:
            if bad:
                self._quarantine(bad)

    def _quarantine(self, steps: list[int]) -> None:
        """Move damaged step folders aside (kept for inspection) so that the resumed run can save those steps."""
        if jax.process_index() == 0:
            dest = os.path.join(self.directory, "corrupt")
            os.makedirs(dest, exist_ok=True)
            for step in steps:
                src = os.path.join(self.directory, str(step))
                if os.path.isdir(src):
                    os.replace(src, os.path.join(dest, f"step_{step}_{time.strftime('%Y%m%d-%H%M%S')}"))
        self._mngr.reload()

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()
