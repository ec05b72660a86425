"""Train / eval steps: equal to a hand-written step, BatchNorm statistics, bf16, non-finite detection."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rnlib.train import create_train_state, make_eval_step, make_optimizer, make_train_step, params_sha256
from train_tinynet import make_tiny


def batch(seed, n=16, h=8, c=1):
    r = np.random.default_rng(seed)
    return {"image": r.normal(size=(n, h, h, c)).astype(np.float32), "label": r.integers(0, 10, n).astype(np.int32)}


@pytest.fixture(scope="module")
def setup():
    model = make_tiny()
    tx = make_optimizer("sgd", 0.1)
    return model, tx, make_train_step()  # one compiled step shared by the f32 tests


def fresh(setup):
    model, tx, _ = setup
    return create_train_state(model, tx, seed=0)


def test_step_matches_hand_written_jit(setup):
    model, tx, step = setup
    state = fresh(setup)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    opt = tx.init(params)

    @jax.jit
    def ref_step(params, rest, opt, b):
        def loss_fn(p):
            m = nnx.merge(graphdef, p, rest)
            logits = m(b["image"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, b["label"]).mean(), m
        (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), nnx.to_pure_dict(nnx.state(m, nnx.BatchStat)), opt, loss

    for i in range(3):
        b = batch(i)
        params, rest, opt, ref_loss = ref_step(params, rest, opt, b)
        state, m = step(state, b)
        np.testing.assert_allclose(m["loss"], ref_loss, rtol=1e-6)
    jax.tree.map(lambda a, r: np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-7), state.params, params)
    jax.tree.map(lambda a, r: np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-7), state.model_state, rest)
    assert int(state.step) == 3 and int(state.bad_step) == -1


def test_batchnorm_stats_update_and_eval_mode(setup):
    state = fresh(setup)
    before = jax.tree.map(np.asarray, state.model_state)
    state, _ = setup[2](state, batch(0))
    after = state.model_state
    assert not np.allclose(before["bn"]["mean"], after["bn"]["mean"])
    assert not np.allclose(before["bn"]["var"], after["bn"]["var"])
    ev = make_eval_step()
    b = batch(1)
    out = ev(state, {**b, "mask": np.r_[np.ones(10), np.zeros(6)].astype(np.float32)})
    assert float(out["count"]) == 10
    logits = jax.jit(lambda s, x: s.model()(x))(state, b["image"])  # eval mode: running statistics, deterministic
    np.testing.assert_allclose(float(out["correct"]), float(np.sum(np.argmax(logits, -1)[:10] == b["label"][:10])))
    # eval does not touch the statistics
    out2 = ev(state, b)
    assert float(out2["count"]) == 16


def test_bf16_compute_keeps_f32_params_and_loss(setup):
    s32, s16 = fresh(setup), fresh(setup)
    b = batch(2)
    s32, m32 = make_train_step("f32", donate=False)(s32, b)
    s16, m16 = make_train_step("bf16", donate=False)(s16, b)
    assert m16["loss"].dtype == jnp.float32
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(s16.params))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(s16.model_state))
    np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=3e-2)
    assert params_sha256(s16.params) != params_sha256(s32.params)  # it really ran in bf16
    with pytest.raises(ValueError, match="precision must be one of"):
        make_train_step("fp8")(s32, b)


def test_nonfinite_loss_records_first_bad_step(setup):
    state, step = fresh(setup), setup[2]
    for i in range(5):
        b = batch(i)
        if i == 2:
            b["image"][0, 0, 0, 0] = np.nan  # the third update sees a NaN
        state, m = step(state, b)
    assert int(state.bad_step) == 3 and int(state.step) == 5


def test_state_is_donated(setup):
    state, step = fresh(setup), setup[2]
    state, _ = step(state, batch(0))
    old = state
    state, _ = step(state, batch(1))
    leaf = jax.tree.leaves(old.params)[0]
    if jax.default_backend() == "cpu" and not leaf.is_deleted():
        pytest.skip("this backend ignored buffer donation")
    assert leaf.is_deleted()


def test_sha256_fingerprint_is_order_fixed_and_sensitive():
    p = {"b": jnp.ones(3), "a": {"k": jnp.zeros((2, 2))}}
    q = {"a": {"k": jnp.zeros((2, 2))}, "b": jnp.ones(3)}
    assert params_sha256(p) == params_sha256(q)
    assert params_sha256(p) != params_sha256({**p, "b": jnp.ones(3).at[1].set(1.0000001)})
