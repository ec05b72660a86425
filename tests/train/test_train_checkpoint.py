"""Checkpoint/resume: bit-identical after SIGKILL, fallback past a corrupt checkpoint, non-finite loss stop."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from rnlib.train import Checkpointer, NonFiniteLossError, TrainConfig, fit, load_digits
from train_tinynet import tiny_model_fn

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 16
# A constant schedule makes the lr independent of the run length, so a run started with many more steps and
# killed part-way is the same computation as the uninterrupted STEPS-step reference.
BASE = dict(data="digits", batch_size=16, seed=5, schedule="constant", lr=0.05, devices=1, quiet=True,
            final_train_eval=False, log_every=4, eval_batch_size=128)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def reference(digits):
    return fit(TrainConfig(steps=STEPS, **BASE), model_fn=tiny_model_fn, dataset=digits)


def resume(digits, ckpt_dir, out=None):
    return fit(TrainConfig(steps=STEPS, ckpt_dir=str(ckpt_dir), ckpt_every=4, ckpt_keep=2, resume=True,
                           out=None if out is None else str(out), **BASE), model_fn=tiny_model_fn, dataset=digits)


def entries(d):
    return os.listdir(d) if os.path.isdir(d) else []


def test_sigkill_during_save_then_resume_is_bit_identical(digits, reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {HERE!r})
        from rnlib.train import TrainConfig, fit
        from train_tinynet import tiny_model_fn
        fit(TrainConfig(steps=100000, ckpt_dir={str(ckpt)!r}, ckpt_every=1, ckpt_keep=2, **{BASE!r}),
            model_fn=tiny_model_fn)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ), stderr=subprocess.PIPE)
    try:
        deadline, mid_save = time.monotonic() + 240, False
        while time.monotonic() < deadline and proc.poll() is None:
            names = entries(ckpt)
            done = [int(n) for n in names if n.isdigit()]
            if done and max(done) >= 6:
                if any("tmp" in n for n in names):  # a save is in flight: kill it right there
                    mid_save = True
                    break
                if time.monotonic() > deadline - 200:
                    break
            time.sleep(0.002)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    print("killed mid-save:", mid_save, "entries:", sorted(entries(ckpt)))
    latest = Checkpointer(ckpt).latest_step()
    assert latest is not None and 6 <= latest < STEPS
    out = tmp_path / "out"
    res = resume(digits, ckpt, out)
    assert res.steps == STEPS
    assert res.params_sha256 == reference.params_sha256
    final = json.loads((out / "final.json").read_text())
    assert final["resumed_from_step"] == latest and final["params_sha256"] == reference.params_sha256


def corrupt(step_dir, how):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    assert files
    for f in files:
        if how == "garbage":
            size = os.path.getsize(f)
            with open(f, "wb") as fh:
                fh.write(np.random.default_rng(0).integers(0, 256, max(size, 8), dtype=np.uint8).tobytes())
        elif how == "truncate":
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)


def test_corrupt_latest_falls_back_to_previous(digits, reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    fit(TrainConfig(steps=12, ckpt_dir=str(ckpt), ckpt_every=4, ckpt_keep=3, **BASE), model_fn=tiny_model_fn,
        dataset=digits)
    assert Checkpointer(ckpt).all_steps() == [4, 8, 12]
    corrupt(ckpt / "12", "truncate")  # a partial write
    corrupt(ckpt / "8", "garbage")  # flipped bytes
    with pytest.warns(RuntimeWarning, match=r"checkpoint at step 12 .* falling back") as rec:
        res = resume(digits, ckpt)
    assert any("checkpoint at step 8" in str(w.message) for w in rec)
    assert res.params_sha256 == reference.params_sha256  # resumed from step 4 and replayed 5..16 exactly
    assert len(os.listdir(ckpt / "corrupt")) == 2  # the damaged ones were kept aside, not deleted


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(digits, tmp_path):
    ckpt = tmp_path / "ckpt"
    cfg = TrainConfig(steps=200, ckpt_dir=str(ckpt), ckpt_every=2, out=str(tmp_path / "out"), eval_every=3,
                      **{**BASE, "lr": 1e4, "log_every": 1})
    with pytest.raises(NonFiniteLossError) as e:
        fit(cfg, model_fn=tiny_model_fn, dataset=digits)
    bad = e.value.step
    assert bad >= 4  # lr 1e4 diverges after a few steps (5 here), so the rows below are not vacuous
    assert f"non-finite (NaN/inf) at step {bad}" in str(e.value) and "last good checkpoint" in str(e.value)
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows) and rows[-1]["step"] == bad - 1
    assert all(("test_error" in r) == (r["step"] % 3 == 0) for r in rows)  # eval_every between log steps
    good = Checkpointer(ckpt).latest_step()
    assert good is not None and good < bad
    state, _ = Checkpointer(ckpt).restore_latest(_template(digits, cfg))
    assert int(state.step) == good and int(state.bad_step) == -1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def _template(digits, cfg):
    from flax import nnx

    from rnlib.train import create_train_state, make_optimizer, make_schedule
    tx = make_optimizer("sgd", make_schedule(cfg.schedule, cfg.steps, cfg.lr))
    return create_train_state(tiny_model_fn(digits, nnx.Rngs(0)), tx, cfg.seed)


def test_roundtrip_with_typed_rng_keys_in_model_state(tmp_path):
    """A model holding nnx.Rngs (here Dropout's) checkpoints its typed PRNG key and counter exactly."""
    from flax import nnx

    from rnlib.train import create_train_state, init_module, make_optimizer, make_train_step

    class Drop(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(64, 10, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.lin(x.reshape(x.shape[0], -1)))

    model = init_module(Drop, 0)
    tx = make_optimizer("sgd", 0.1)
    state = create_train_state(model, tx, 0)
    b = {"image": np.ones((4, 8, 8, 1), np.float32), "label": np.zeros(4, np.int32)}
    state, _ = make_train_step()(state, b)
    assert int(state.model_state["drop"]["rngs"]["count"]) == 1  # the dropout stream advanced
    c = Checkpointer(tmp_path)
    c.save(state, {"note": "x"})
    c.close()
    restored, extra = Checkpointer(tmp_path).restore_latest(create_train_state(model, tx, 0))
    assert extra == {"note": "x"}
    k0, k1 = restored.model_state["drop"]["rngs"]["key"], state.model_state["drop"]["rngs"]["key"]
    assert jax.dtypes.issubdtype(k0.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(k0), jax.random.key_data(k1))
    jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
    jax.tree.map(np.testing.assert_array_equal, restored.opt_state, state.opt_state)
