"""Datasets (digits, CIFAR-10 files written here), deterministic batching, on-device augmentation."""
import os
import pickle

import jax
import numpy as np
import pytest

from rnlib.train import Augment, BatchLoader, augment_batch, load_cifar10, load_dataset, load_digits


def write_cifar(d, n=6, seed=0, skip=(), mutate=None):
    """Write CIFAR-10-format python batches with n images each; returns {file: (data, labels)}."""
    rng = np.random.default_rng(seed)
    out = {}
    os.makedirs(d, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if name in skip:
            continue
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, n))
        obj = {b"data": data, b"labels": labels, b"batch_label": name.encode()}
        if mutate and name in mutate:
            obj = mutate[name](obj)
        with open(os.path.join(d, name), "wb") as f:
            pickle.dump(obj, f)
        out[name] = (data, np.array(labels))
    return out


def test_digits_split_shapes_and_mean_subtraction():
    ds = load_digits()
    assert ds.image_shape == (8, 8, 1) and ds.num_classes == 10
    assert ds.size("train") == 1437 and ds.size("test") == 360
    assert ds.augment == Augment(pad=1, flip=False)
    up = load_digits(upsample=2)
    assert up.image_shape == (16, 16, 1) and up.augment == Augment(pad=2, flip=False)
    np.testing.assert_array_equal(up.train_raw[:, ::2, ::2], ds.train_raw)
    b = ds.take("train", np.arange(ds.size("train")))
    assert b["image"].dtype == np.float32 and b["label"].dtype == np.int32
    np.testing.assert_allclose(b["image"].mean(0), 0.0, atol=1e-5)  # per-pixel mean removed
    assert set(np.unique(b["label"])) == set(range(10))
    again = load_digits()  # fixed split, independent of anything random
    np.testing.assert_array_equal(again.test_labels, ds.test_labels)
    np.testing.assert_array_equal(again.test_raw, ds.test_raw)


def test_cifar_loads_nhwc_and_subtracts_train_mean(tmp_path):
    files = write_cifar(tmp_path)
    ds = load_cifar10(tmp_path)
    assert ds.image_shape == (32, 32, 3) and ds.size("train") == 30 and ds.size("test") == 6
    data, labels = files["data_batch_2"]
    # channel-major rows: red plane, then green, then blue
    np.testing.assert_array_equal(ds.train_raw[6, 3, 5], data[0, [3 * 32 + 5, 1024 + 3 * 32 + 5, 2048 + 3 * 32 + 5]])
    np.testing.assert_array_equal(ds.train_labels[6:12], labels)
    x = ds.take("train", np.arange(30))["image"]
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-5)
    mean = np.concatenate([files[f"data_batch_{i}"][0] for i in range(1, 6)]).astype(np.float64).mean(0) / 255
    np.testing.assert_allclose(ds.mean, mean.reshape(3, 32, 32).transpose(1, 2, 0), rtol=1e-6)
    t = ds.take("test", np.array([1]))
    np.testing.assert_allclose(t["image"][0], ds.test_raw[1] / 255.0 - ds.mean, rtol=1e-5, atol=1e-6)
    assert load_dataset("cifar10", tmp_path).size("test") == 6


def test_cifar_subfolder_is_accepted(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    assert load_cifar10(tmp_path).size("train") == 30


def test_cifar_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nope")
    write_cifar(tmp_path, skip=("data_batch_3", "test_batch"))
    with pytest.raises(FileNotFoundError, match="missing data_batch_3, test_batch"):
        load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")


@pytest.mark.parametrize("mutate,match", [
    (lambda o: {b"labels": o[b"labels"]}, r"missing key b'data'"),
    (lambda o: {**o, b"data": o[b"data"][:, :100]}, r"data_batch_4: b'data' must be uint8 of shape \(N, 3072\)"),
    (lambda o: {**o, b"data": o[b"data"].astype(np.float32)}, "must be uint8"),
    (lambda o: {**o, b"labels": o[b"labels"][:2]}, "has 2 entries for 6 images"),
    (lambda o: {**o, b"labels": [12] * 6}, "labels must lie in 0..9"),
    (lambda o: [1, 2], "expected a pickled dict"),
])
def test_cifar_malformed_file_named(tmp_path, mutate, match):
    write_cifar(tmp_path, mutate={"data_batch_4": mutate})
    with pytest.raises(ValueError, match=match):
        load_cifar10(tmp_path)


def test_cifar_not_a_pickle(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="test_batch is not a readable python pickle"):
        load_cifar10(tmp_path)


def test_loader_deterministic_epochs_and_resume():
    a = BatchLoader(50, 8, seed=3)
    seq = [a.next_indices() for _ in range(13)]  # 6 batches per epoch (2 dropped), a bit over 2 epochs
    epoch0 = np.concatenate(seq[:6])
    assert len(set(epoch0)) == 48 and epoch0.max() < 50  # no repeats within an epoch
    assert not np.array_equal(np.concatenate(seq[6:12]), epoch0)  # fresh permutation each epoch
    b = BatchLoader(50, 8, seed=3)
    b.load_state_dict(BatchLoader(50, 8, seed=3, position=7).state_dict())
    np.testing.assert_array_equal(b.next_indices(), seq[7])
    assert not np.array_equal(BatchLoader(50, 8, seed=4).next_indices(), seq[0])
    with pytest.raises(ValueError, match="saved for seed/batch_size/n"):
        b.load_state_dict(BatchLoader(50, 16, seed=3).state_dict())
    with pytest.raises(ValueError, match="batch_size must be in 1..50"):
        BatchLoader(50, 64, seed=0)


def test_augment_is_a_zero_filled_shift_and_optional_flip():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 3)).astype(np.float32) + 5.0  # no zeros in the images themselves
    aug = Augment(pad=2, flip=True)
    y = np.asarray(augment_batch(jax.random.key(0), x, aug))
    assert y.shape == x.shape
    np.testing.assert_array_equal(y, np.asarray(augment_batch(jax.random.key(0), x, aug)))  # deterministic
    assert not np.array_equal(y, np.asarray(augment_batch(jax.random.key(1), x, aug)))
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    seen = set()
    for i in range(len(x)):
        matches = [(oy, ox, f) for oy in range(5) for ox in range(5) for f in (False, True)
                   if np.array_equal(y[i], (lambda c: c[:, ::-1] if f else c)(padded[i, oy:oy + 8, ox:ox + 8]))]
        assert matches, f"image {i} is not a shifted/flipped crop"
        seen.update(matches)
    assert len({m[2] for m in seen}) == 2 and len({m[:2] for m in seen}) > 3  # both flips, several offsets
    np.testing.assert_array_equal(np.asarray(augment_batch(jax.random.key(0), x, Augment(0, False))), x)


def test_fit_on_cifar_files(tmp_path):
    """The CIFAR path end to end (fake files written here, a tiny model): shapes, augmentation and eval all run."""
    from rnlib.train import TrainConfig, fit
    from train_tinynet import tiny_model_fn

    write_cifar(tmp_path / "c", n=8)
    res = fit(TrainConfig(data="cifar10", data_dir=str(tmp_path / "c"), steps=3, batch_size=8, devices=1,
                          quiet=True, eval_batch_size=16), model_fn=tiny_model_fn)
    assert res.steps == 3 and 0.0 <= res.test_accuracy <= 1.0 and len(res.params_sha256) == 64
