"""Datasets, deterministic batching and on-device augmentation.

* `load_digits()`: scikit-learn's bundled 8x8 digits (no download), upsampled 2x to 16x16x1, fixed 80/20 split.
* `load_cifar10(dir)`: the standard CIFAR-10 python batches (`data_batch_1..5`, `test_batch`).
* Both scale pixels to [0, 1] and subtract the per-pixel mean of the training set (He et al. 2015, sec. 4.2).
* `BatchLoader`: epoch-wise permutations drawn from (seed, epoch), so the batch at any position is a pure function
  of (seed, position): resuming only needs the position.
* `augment_batch`: the paper's zero-pad + random crop + horizontal flip, on device from a PRNG key.
* `load_dataset("imagenet", dir)`: an ImageFolder tree of JPEGs through grain (`rnlib.train._imagenet`).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DATASETS = ("digits", "cifar10", "imagenet")
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"


@dataclasses.dataclass(frozen=True)
class Augment:
    """Random translation by zero-padding `pad` pixels and cropping back, plus optional horizontal flip."""

    pad: int = 4
    flip: bool = True


@dataclasses.dataclass
class Dataset:
    """Images NHWC (raw: uint8 or float), labels int32; `take` returns float32 mean-subtracted batches.

    x = raw * scale - mean, with `mean` (H, W, C) the per-pixel mean of the scaled training images.
    """

    name: str
    train_raw: np.ndarray
    train_labels: np.ndarray
    test_raw: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    scale: float
    augment: Augment | None
    mean: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.mean = (self.train_raw.astype(np.float64) * self.scale).mean(axis=0).astype(np.float32)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_raw.shape[1:])  # type: ignore[return-value]

    def take(self, split: str, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Batch {"image": float32 (B, H, W, C), "label": int32 (B,)} for integer indices `idx` into `split`."""
        raw, labels = (self.train_raw, self.train_labels) if split == "train" else (self.test_raw, self.test_labels)
        image = raw[idx].astype(np.float32) * np.float32(self.scale) - self.mean
        return {"image": image, "label": labels[idx].astype(np.int32)}

    def size(self, split: str) -> int:
        return len(self.train_labels if split == "train" else self.test_labels)

    input_norm = None  # `take` already returns normalised float32 images

    def train_loader(self, global_batch_size: int, seed: int, shard: tuple[int, int] = (0, 1),
                     position: int = 0) -> "ArrayLoader":
        return ArrayLoader(self, BatchLoader(self.size("train"), global_batch_size, seed, position), shard)

    def eval_batches(self, split: str, global_batch_size: int, shard: tuple[int, int] = (0, 1)):
        """This host's slices of the zero-padded global batches covering `split` in order, with a "mask"."""
        n, local = self.size(split), global_batch_size // shard[1]
        mine = slice(shard[0] * local, (shard[0] + 1) * local)
        for start in range(0, n, global_batch_size):
            idx = np.arange(start, min(start + global_batch_size, n))
            batch = self.take(split, idx)
            pad = global_batch_size - len(idx)
            batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
            batch["mask"] = (np.arange(global_batch_size) < len(idx)).astype(np.float32)
            yield {k: v[mine] for k, v in batch.items()}


def load_digits(upsample: int = 1) -> Dataset:
    """scikit-learn's digits (1797 8x8 grey images, values 0..16) as (8u, 8u, 1), nearest-upsampled by `upsample`.

    The default keeps the native 8x8 (a CIFAR ResNet then runs its stages at 8, 4, 2 pixels): upsampling adds no
    information and costs 4x the compute per factor of 2 on a CPU.

    Fixed split independent of any training seed: a permutation from seed 0, last 360 images (20 %) for test.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'digits' dataset needs scikit-learn; install the training extra: pip install 'rnlib[train]'"
        ) from e
    d = _sk_load_digits()
    images = d.images.astype(np.float32)  # (N, 8, 8)
    images = np.repeat(np.repeat(images, upsample, axis=1), upsample, axis=2)[..., None]
    perm = np.random.default_rng(0).permutation(len(images))
    n_test = 360
    tr, te = perm[:-n_test], perm[-n_test:]
    labels = d.target.astype(np.int32)
    # Digits are not mirror-symmetric: translate only, by 1/8 of the side like CIFAR's 4/32.
    return Dataset("digits", images[tr], labels[tr], images[te], labels[te], 10, 1.0 / 16.0,
                   Augment(pad=upsample, flip=False))


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:
        raise ValueError(f"CIFAR-10 file {path} is not a readable python pickle ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"CIFAR-10 file {path}: expected a pickled dict, got {type(d).__name__}")
    for key in (b"data", b"labels"):
        if key not in d and key.decode() not in d:
            raise ValueError(f"CIFAR-10 file {path}: missing key {key!r} (has {sorted(map(str, d))})")
    data = np.asarray(d.get(b"data", d.get("data")))
    labels = np.asarray(d.get(b"labels", d.get("labels")))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"CIFAR-10 file {name}: b'data' must be uint8 of shape (N, 3072), "
                         f"got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"CIFAR-10 file {name}: b'labels' has {labels.size} entries for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"CIFAR-10 file {name}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    # Stored channel-major: (N, 3, 32, 32) -> NHWC.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int32)


def load_cifar10(data_dir: str | os.PathLike) -> Dataset:
    """CIFAR-10 from the standard python batches in `data_dir` (as unpacked from cifar-10-python.tar.gz).

    Raises FileNotFoundError naming the missing files, ValueError naming a malformed one.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"CIFAR-10 directory {data_dir!r} does not exist; it must hold the python batches "
                                f"{', '.join(CIFAR_TRAIN_FILES)}, {CIFAR_TEST_FILE}")
    # Accept the folder itself or its usual 'cifar-10-batches-py' subfolder.
    sub = os.path.join(data_dir, "cifar-10-batches-py")
    if not os.path.exists(os.path.join(data_dir, CIFAR_TEST_FILE)) and os.path.isdir(sub):
        data_dir = sub
    wanted = CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,)
    missing = [f for f in wanted if not os.path.isfile(os.path.join(data_dir, f))]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 directory {data_dir!r} is missing {', '.join(missing)} (the python "
                                "batches unpacked from cifar-10-python.tar.gz)")
    parts = [_read_cifar_batch(os.path.join(data_dir, f)) for f in CIFAR_TRAIN_FILES]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = _read_cifar_batch(os.path.join(data_dir, CIFAR_TEST_FILE))
    return Dataset("cifar10", xtr, ytr, xte, yte, 10, 1.0 / 255.0, Augment(pad=4, flip=True))


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, image_size: int = 224,
                 workers: int = 0) -> Any:
    """A `Dataset` (digits, cifar10: in memory) or an `ImageFolderData` (imagenet: decoded on the fly;
    `image_size` is its crop size, `workers` its decoding processes)."""
    if name == "digits":
        return load_digits()
    if name == "cifar10":
        if data_dir is None:
            raise ValueError("--data cifar10 needs --data-dir pointing at the CIFAR-10 python batches")
        return load_cifar10(data_dir)
    if name == "imagenet":
        if data_dir is None:
            raise ValueError("--data imagenet needs --data-dir pointing at a folder with train/<class>/*.JPEG and "
                             "val/<class>/*.JPEG")
        from rnlib.train._imagenet import load_imagenet

        return load_imagenet(data_dir, image_size=image_size, workers=workers)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


class PositionState:
    """Checkpointable position of a loader whose batch ``p`` depends only on ``(seed, batch_size, n, p)``.

    Subclasses set ``position``, ``seed``, ``batch_size`` and ``n``; :meth:`_seek` moves to a saved position.
    """

    position: int
    seed: int
    batch_size: int
    n: int

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "seed": self.seed, "batch_size": self.batch_size, "n": self.n}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if (d["seed"], d["batch_size"], d["n"]) != (self.seed, self.batch_size, self.n):
            raise ValueError(f"data position was saved for seed/batch_size/n = {(d['seed'], d['batch_size'], d['n'])}"
                             f" but this run uses {(self.seed, self.batch_size, self.n)}")
        self._seek(int(d["position"]))

    def _seek(self, position: int) -> None:
        self.position = position


class BatchLoader(PositionState):
    """Deterministic shuffled batches: batch `p` (0-based position) is a pure function of (seed, p).

    Each epoch draws a fresh permutation from numpy's PCG64 seeded with (seed, epoch) and yields
    floor(n / batch_size) full batches (the remainder of each epoch is dropped, as with drop_last=True).
    `position` counts batches handed out; save it and pass it back to resume exactly.
    """

    def __init__(self, n: int, batch_size: int, seed: int, position: int = 0):
        if batch_size <= 0 or batch_size > n:
            raise ValueError(f"batch_size must be in 1..{n} (the training-set size), got {batch_size}")
        self.n, self.batch_size, self.seed, self.position = n, batch_size, seed, position
        self.per_epoch = n // batch_size
        self._epoch, self._perm = -1, None

    def indices(self, position: int) -> np.ndarray:
        epoch, k = divmod(position, self.per_epoch)
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        return self._perm[k * self.batch_size:(k + 1) * self.batch_size]

    def next_indices(self) -> np.ndarray:
        idx = self.indices(self.position)
        self.position += 1
        return idx



class ArrayLoader:
    """`BatchLoader` over an in-memory `Dataset`: `next_batch()` is this host's slice (`shard` = (process index,
    process count)) of the next global batch; `state_dict` / `load_state_dict` are the BatchLoader's."""

    def __init__(self, dataset: Dataset, order: BatchLoader, shard: tuple[int, int] = (0, 1)):
        self.dataset, self.order, self.shard = dataset, order, shard

    def next_batch(self) -> dict[str, np.ndarray]:
        idx = self.order.next_indices()
        local = len(idx) // self.shard[1]
        return self.dataset.take("train", idx[self.shard[0] * local:(self.shard[0] + 1) * local])

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.order.load_state_dict(d)

    def close(self) -> None:
        pass


def augment_batch(key: jax.Array, images: jax.Array, aug: Augment) -> jax.Array:
    """Pad (B, H, W, C) images with `aug.pad` zeros per side (zero = the mean pixel after mean subtraction),
    crop a random H x W window per image and flip it horizontally with probability 1/2 if `aug.flip`."""
    b, h, w, _ = images.shape
    p = aug.pad
    kx, ky, kf = jax.random.split(key, 3)
    out = images
    if p:
        padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        oy = jax.random.randint(ky, (b,), 0, 2 * p + 1)
        ox = jax.random.randint(kx, (b,), 0, 2 * p + 1)
        out = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (h, w, im.shape[-1])))(padded, oy, ox)
    if aug.flip:
        flip = jax.random.bernoulli(kf, 0.5, (b,))
        out = jnp.where(flip[:, None, None, None], out[:, :, ::-1, :], out)
    return out
