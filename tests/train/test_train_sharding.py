"""Data parallel on 8 virtual CPU devices equals the single-device run."""
import jax
import numpy as np
import pytest

from rnlib.train import DataParallel, create_train_state, make_eval_step, make_optimizer, make_train_step
from rnlib.train import Augment
from train_tinynet import make_tiny


def run(devices, steps=3):
    dp = DataParallel(jax.devices()[:devices])
    state = dp.replicate(create_train_state(make_tiny(), make_optimizer("sgd", 0.1), seed=0))
    step = make_train_step(augment=Augment(pad=1, flip=True), parallel=dp)
    r = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        b = {"image": r.normal(size=(16, 8, 8, 1)).astype(np.float32), "label": r.integers(0, 10, 16).astype(np.int32)}
        b = dp.put_batch(b)
        assert b["image"].sharding.is_equivalent_to(dp.batch_sharding, 4)
        state, m = step(state, b)
        losses.append(float(m["loss"]))
    leaf = jax.tree.leaves(state.params)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == devices
    ev = make_eval_step(parallel=dp)(state, b)
    return np.array(losses), jax.tree.map(np.asarray, state.params), float(ev["correct"])


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (virtual) devices: see tests/conftest.py")
def test_eight_devices_match_one():
    l1, p1, c1 = run(1)
    l8, p8, c8 = run(8)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p8, p1)
    assert c8 == c1


def test_indivisible_batch_is_a_clear_error():
    dp = DataParallel(jax.devices()[:min(4, len(jax.devices()))])
    if dp.num_devices == 1:
        pytest.skip("needs >1 device")
    with pytest.raises(ValueError, match=f"batch size 10 is not divisible by the {dp.num_devices} devices"):
        dp.check_batch_size(10)
    with pytest.raises(ValueError, match="not divisible"):
        dp.put_batch({"x": np.zeros((10, 2), np.float32)})
    assert dp.local_slice(8) == slice(0, 8)  # single process: the whole batch is local
