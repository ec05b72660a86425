"""The ImageNet ImageFolder pipeline on a generated JPEG tree: errors naming the path, the transforms, order and
determinism, host shards, corrupt images, and fit() resuming to the uninterrupted run's exact parameters."""
import logging
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("grain")
PIL = pytest.importorskip("PIL.Image")

from rnlib.train import TrainConfig, fit  # noqa: E402
from rnlib.train import _imagefolder as imf  # noqa: E402
from rnlib.train import load_imagenet  # noqa: E402
from imagenet_tree import make_tree  # noqa: E402
from train_tinynet import tiny_model_fn  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("imagenet"))  # 3 classes x (8 train, 3 val)


@pytest.fixture(scope="module")
def data(tree):
    return load_imagenet(tree, image_size=SIZE)


def batches(loader, k):
    return [loader.next_batch() for _ in range(k)]


# ---------------------------------------------------------------- bad input: a clear error naming the path

def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_imagenet(tmp_path / "nope")


def test_missing_and_empty_split(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        load_imagenet(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path / 'train'}.* is empty"):
        load_imagenet(tmp_path)


def test_no_class_folders(tmp_path):
    make_tree(tmp_path, classes=2, train_per_class=2, val_per_class=1)
    val = tmp_path / "val"
    for f in list(val.rglob("*.JPEG")):  # ImageNet's val/ as shipped: flat
        shutil.move(f, val / f"{f.parent.name}_{f.name}")
    for d in val.iterdir():
        if d.is_dir():
            d.rmdir()
    with pytest.raises(ValueError, match=f"{val}.* has no class folders \\(2 files directly inside\\)"):
        load_imagenet(tmp_path)


def test_class_folder_without_images_and_unknown_val_class(tmp_path):
    make_tree(tmp_path, classes=2, train_per_class=2, val_per_class=1)
    (tmp_path / "train" / "c09").mkdir()
    with pytest.raises(ValueError, match=f"class folder .*{tmp_path / 'train' / 'c09'}.* holds no images"):
        load_imagenet(tmp_path)
    (tmp_path / "train" / "c09").rmdir()
    (tmp_path / "val" / "zzz").mkdir()
    with pytest.raises(ValueError, match="has class folders the training split lacks: zzz"):
        load_imagenet(tmp_path)


def test_unreadable_image_is_named(tmp_path):
    make_tree(tmp_path, classes=2, train_per_class=2, val_per_class=1)
    bad = tmp_path / "train" / "c00" / "img_000.JPEG"
    bad.write_text("not a jpeg")
    with pytest.raises(ValueError, match=f"cannot read image .*{bad}"):
        load_imagenet(tmp_path)


# ---------------------------------------------------------------- transforms

def test_eval_transform_is_resize_then_center_crop(tmp_path):
    """load_eval (one Pillow call on a box, JPEG draft decoding) against the literal recipe on a PNG (no draft):
    resize the shorter side to 256/224 x S, crop the centre S x S."""
    rng = np.random.default_rng(0)
    # Smooth content, so the two resampling routes agree to a few grey levels.
    yy, xx = np.mgrid[0:90, 0:150]
    pix = np.stack([120 + 80 * np.sin(xx / 17), 120 + 80 * np.cos(yy / 13), 60 + xx * 0 + yy], -1)
    pix = np.clip(pix + rng.normal(0, 2, pix.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "a.png"
    PIL.fromarray(pix).save(path)
    got = imf.load_eval(str(path), 32).astype(np.float64)
    r = round(32 * 256 / 224)
    w = round(150 * r / 90)
    full = np.asarray(PIL.fromarray(pix).resize((w, r), PIL.BILINEAR), np.float64)
    x0, y0 = (w - 32) // 2, (r - 32) // 2
    want = full[y0:y0 + 32, x0:x0 + 32]
    assert got.shape == (32, 32, 3)
    # The box is centred to a fraction of a pixel, the literal recipe to a whole one: a few grey levels apart.
    assert np.abs(got - want).mean() < 3.0 and np.abs(got - want).max() < 16
    off = full[y0 + 3:y0 + 35, x0 + 3:x0 + 35]  # control: a crop 3 pixels off is far worse
    assert np.abs(got - off).mean() > 4 * np.abs(got - want).mean()


def test_random_resized_crop_box_ranges():
    rng = np.random.default_rng(1)
    for w, h in [(500, 375), (40, 300), (300, 40), (8, 8)]:
        for _ in range(200):
            x0, y0, x1, y1 = imf.crop_box_rrc(rng, w, h)
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    # On a roomy image the 10 tries almost never fail: area fraction in [0.08, 1], aspect in [3/4, 4/3].
    boxes = [imf.crop_box_rrc(rng, 500, 500) for _ in range(500)]
    area = np.array([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]) / 500 ** 2
    aspect = np.array([(b[2] - b[0]) / (b[3] - b[1]) for b in boxes])
    assert area.min() >= 0.07 and area.max() <= 1.0 and 0.1 < np.median(area) < 0.9
    assert aspect.min() >= 0.74 and aspect.max() <= 1.35


def test_train_transform_flips_half_and_keeps_content(tree):
    path = os.path.join(tree, "train", "c00", "img_000.JPEG")
    outs = [imf.load_train(path, SIZE, np.random.default_rng(s)) for s in range(40)]
    assert all(o.shape == (SIZE, SIZE, 3) and o.dtype == np.uint8 for o in outs)
    # Class 0 images are red-dominated: every crop keeps that.
    assert all(o[..., 0].mean() > o[..., 1].mean() + 40 for o in outs)


# ---------------------------------------------------------------- order, determinism, shards, resume position

def test_batches_are_deterministic_and_cover_each_epoch(data):
    a = batches(data.train_loader(8, seed=3), 6)
    b = batches(data.train_loader(8, seed=3), 6)
    c = batches(data.train_loader(8, seed=4), 1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert a[0]["image"].shape == (8, SIZE, SIZE, 3) and a[0]["image"].dtype == np.uint8
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    for epoch in (a[:3], a[3:]):  # 24 images, batch 8: each epoch sees every image once (8 per class)
        assert np.bincount(np.concatenate([x["label"] for x in epoch]), minlength=3).tolist() == [8, 8, 8]
    assert not np.array_equal(a[0]["label"], a[3]["label"])  # a fresh permutation per epoch


def test_resume_position_gives_the_same_batches(data):
    ref = batches(data.train_loader(8, seed=1), 5)
    loader = data.train_loader(8, seed=1)
    batches(loader, 2)
    state = loader.state_dict()
    resumed = data.train_loader(8, seed=1)
    resumed.load_state_dict(state)
    for x, y in zip(batches(resumed, 3), ref[2:]):
        np.testing.assert_array_equal(x["image"], y["image"])
    with pytest.raises(ValueError, match="seed/batch_size/n"):
        data.train_loader(8, seed=2).load_state_dict(state)


def test_host_shards_are_disjoint_slices_of_the_global_batch(data):
    whole = batches(data.train_loader(8, seed=0), 4)
    parts = [batches(data.train_loader(8, seed=0, shard=(i, 2)), 4) for i in range(2)]
    for k in range(4):
        assert parts[0][k]["image"].shape[0] == 4
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([parts[0][k][key], parts[1][k][key]]), whole[k][key])
    with pytest.raises(ValueError, match="cannot be split into 3 equal shards"):
        data.train_loader(8, seed=0, shard=(0, 3))


def test_eval_batches_cover_the_split_once_with_mask(data):
    got = list(data.eval_batches("test", 4))
    assert len(got) == 3 and [float(b["mask"].sum()) for b in got] == [4, 4, 1]
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in got])
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # sorted by class folder, then file
    halves = [list(data.eval_batches("test", 4, shard=(i, 2))) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([halves[0][1]["image"], halves[1][1]["image"]]), got[1]["image"])


# ---------------------------------------------------------------- corrupt images mid-run

def test_corrupt_image_mid_epoch_is_skipped_and_counted(tmp_path, caplog):
    root = make_tree(tmp_path, classes=2, train_per_class=4, val_per_class=2)
    bad = tmp_path / "train" / "c01" / "img_002.JPEG"  # not the first file: the start-up check passes
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    data = load_imagenet(root, image_size=16)
    with caplog.at_level(logging.WARNING, logger="rnlib.train._imagenet"):
        got = batches(data.train_loader(4, seed=0), 4)  # two epochs of 8 images
    assert sum(int(b["skipped"].sum()) for b in got) == 2  # once per epoch
    assert str(bad) in caplog.text
    assert all(b["image"].shape == (4, 16, 16, 3) for b in got)  # batches stay full
    bad_val = tmp_path / "val" / "c00" / "img_001.JPEG"
    bad_val.write_bytes(b"\xff\xd8garbage")
    ev = list(data.eval_batches("test", 4))
    assert sum(float(b["mask"].sum()) for b in ev) == 3 and sum(int(b["skipped"].sum()) for b in ev) == 1


CFG = dict(data="imagenet", batch_size=8, seed=2, schedule="constant", lr=0.05, devices=1, quiet=True,
           final_train_eval=False, log_every=2, eval_batch_size=8, image_size=SIZE)


def test_fit_resume_sees_the_uninterrupted_batches(data, tmp_path):
    """6 steps straight vs 3 steps, checkpoint, a new process-like fit from the checkpoint: same parameters."""
    ref = fit(TrainConfig(steps=6, **CFG), model_fn=tiny_model_fn, dataset=data)
    ckpt = tmp_path / "ck"
    first = fit(TrainConfig(steps=3, ckpt_dir=str(ckpt), ckpt_every=3, **CFG), model_fn=tiny_model_fn, dataset=data)
    assert first.params_sha256 != ref.params_sha256
    out = tmp_path / "out"
    res = fit(TrainConfig(steps=6, ckpt_dir=str(ckpt), resume=True, out=str(out), **CFG), model_fn=tiny_model_fn,
              dataset=data)
    assert res.steps == 6 and res.params_sha256 == ref.params_sha256
    # Row 6 averages steps 5 and 6 in both runs (row 4 of the resumed run covers step 4 only).
    assert res.history[-1]["step"] == 6 and res.history[-1]["loss"] == ref.history[-1]["loss"]
    assert 0.0 <= res.test_accuracy <= 1.0


def test_imagenet_recipe_defaults():
    """--data imagenet without --lr/--schedule: lr 0.1 x batch / 256, /10 at epochs 30 and 60 of 90."""
    from rnlib.train._loop import resolve
    from rnlib.train import make_schedule

    steps, lr, name, warm = resolve(TrainConfig(data="imagenet", epochs=90, batch_size=512), 1_281_167)
    assert (steps, lr, name, warm) == (90 * 2502, pytest.approx(0.2), "imagenet", 0)
    sched = make_schedule(name, steps, lr)
    e = 2502  # steps per epoch
    assert [float(sched(c)) for c in (0, 30 * e - 1, 30 * e, 60 * e - 1, 60 * e)] == pytest.approx(
        [0.2, 0.2, 0.02, 0.02, 0.002])
    steps, lr, name, warm = resolve(TrainConfig(data="imagenet", epochs=2, batch_size=8, warmup_epochs=1,
                                                schedule="cosine", lr=0.4), 24)
    assert (steps, lr, name, warm) == (6, 0.4, "cosine", 3)
    with pytest.raises(ValueError, match="at least one step"):
        resolve(TrainConfig(steps=0), 100)


def test_reduced_scale_jpeg_decoding_matches_full_decoding(tmp_path):
    """load_train decodes a large JPEG at 1/2..1/8 scale when the crop allows: the result stays within a few grey
    levels of cropping and resizing the fully decoded image (same box, same flip)."""
    yy, xx = np.mgrid[0:480, 0:640]
    pix = np.stack([128 + 90 * np.sin(xx / 40), 128 + 90 * np.cos(yy / 30), 128 + 60 * np.sin((xx + yy) / 50)], -1)
    path = tmp_path / "big.JPEG"
    PIL.fromarray(pix.astype(np.uint8)).save(path, quality=95)
    full = PIL.open(path).convert("RGB")
    errs = []
    for seed in range(6):
        got = imf.load_train(str(path), SIZE, np.random.default_rng(seed)).astype(np.float64)
        rng = np.random.default_rng(seed)
        box = imf.crop_box_rrc(rng, 640, 480)
        want = np.asarray(full.resize((SIZE, SIZE), PIL.BILINEAR, box=box), np.float64)
        if rng.random() < 0.5:
            want = want[:, ::-1]
        errs.append(np.abs(got - want).mean())
    assert max(errs) < 1.5, errs  # measured 0.3-0.6; a box off by the decode scale gives tens
