"""ImageNet-style input on grain: an ImageFolder tree `DIR/train/<class>/*.JPEG`, `DIR/val/<class>/*.JPEG`.

    data = load_imagenet("~/imagenet", image_size=224, workers=8)
    loader = data.train_loader(global_batch_size=256, seed=0, shard=(jax.process_index(), jax.process_count()))
    batch = loader.next_batch()        # {"image": uint8 (256 / processes, 224, 224, 3), "label", "skipped"}
    loader.state_dict()                # the position: saved in the checkpoint, passed back to resume

Order, like `rnlib.train.BatchLoader`: epoch e visits the training images in the permutation drawn from
(seed, e), floor(n / B) global batches of B per epoch. Global batch p is a pure function of (seed, p): resuming
needs only p, and every host computes the same permutation (indices only) but decodes only its contiguous slice
of each global batch (`shard`), so two processes feed exactly the global batches one process would. The random
crop/flip of an image draws from (seed, its position in the stream), so it does not depend on the worker count.

Decoding and augmentation run in grain worker processes (`workers`, 0: in this process with `threads` threads),
a batch per worker at a time. Images reach the device as uint8 and are normalised there (`input_norm`).

A corrupt or unreadable image met during training is replaced by the next image of the epoch's order, logged
with its path (a warning) and counted (`batch["skipped"]`); in evaluation it is masked out and counted.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Any, Iterator

import numpy as np

from rnlib.train import _imagefolder as imf
from rnlib.train._data import PositionState

MAX_CONSECUTIVE_BAD = 64  # this many unreadable images in a row: the data is broken, not one file
_log = logging.getLogger("rnlib.train._imagenet")


def _require_grain():
    try:
        import grain
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("--data imagenet needs grain and Pillow: pip install 'rnlib[train]'") from e
    return grain


def _perm(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class _TrainSample:
    """Local stream position j -> one augmented example (a grain map; pickled to the worker processes)."""

    def __init__(self, split: imf.Split, size: int, seed: int, global_bs: int, shard: tuple[int, int]):
        self.split, self.size, self.seed, self.global_bs = split, size, seed, global_bs
        self.index, self.count = shard
        self.local_bs = global_bs // self.count
        self.per_epoch = len(split) // global_bs
        self._perm = functools.lru_cache(maxsize=2)(self._make_perm)

    def _make_perm(self, epoch: int) -> np.ndarray:
        return _perm(self.seed, epoch, len(self.split))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_perm"}

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self._perm = functools.lru_cache(maxsize=2)(self._make_perm)

    def global_position(self, j: int) -> int:
        """The position in the global stream (batch p, row r -> p * B + r) of this host's j-th example."""
        p, k = divmod(j, self.local_bs)
        return p * self.global_bs + self.index * self.local_bs + k

    def __call__(self, j: int) -> dict[str, np.ndarray]:
        q = self.global_position(int(j))
        p, r = divmod(q, self.global_bs)
        epoch, b = divmod(p, self.per_epoch)
        perm = self._perm(epoch)
        rng = np.random.default_rng([self.seed, 1, q])
        n, offset = len(self.split), b * self.global_bs + r
        for skipped in range(MAX_CONSECUTIVE_BAD):
            i = int(perm[(offset + skipped) % n])
            path = self.split.path(i)
            try:
                image = imf.load_train(path, self.size, rng)
            except imf.DECODE_ERRORS as e:
                _log.warning("skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
                continue
            return {"image": image, "label": self.split.labels[i], "skipped": np.int32(skipped)}
        raise RuntimeError(f"{MAX_CONSECUTIVE_BAD} unreadable images in a row, the last {path!r}: is "
                           f"{self.split.root!r} an image folder?")


class _EvalSample:
    """Local position j of the padded evaluation stream -> (image, label, mask); mask 0 for padding/unreadable."""

    def __init__(self, split: imf.Split, size: int, global_bs: int, shard: tuple[int, int]):
        self.split, self.size, self.global_bs = split, size, global_bs
        self.index, self.count = shard
        self.local_bs = global_bs // self.count

    def __call__(self, j: int) -> dict[str, np.ndarray]:
        p, k = divmod(int(j), self.local_bs)
        q = p * self.global_bs + self.index * self.local_bs + k
        blank = {"image": np.zeros((self.size, self.size, 3), np.uint8), "label": np.int32(0),
                 "mask": np.float32(0), "skipped": np.int32(0)}
        if q >= len(self.split):
            return blank
        path = self.split.path(q)
        try:
            image = imf.load_eval(path, self.size)
        except imf.DECODE_ERRORS as e:
            _log.warning("skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
            return {**blank, "skipped": np.int32(1)}
        return {"image": image, "label": self.split.labels[q], "mask": np.float32(1), "skipped": np.int32(0)}


def _iterate(sample, start: int, stop: int, local_bs: int, workers: int, threads: int) -> Iterator[dict]:
    grain = _require_grain()
    ds = grain.MapDataset.range(start, stop).map(sample).batch(local_bs, drop_remainder=True)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, 2 * threads)))
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain reads absl flags; outside an absl app nothing parsed them
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
    return iter(it)


class ImageFolderLoader(PositionState):
    """This host's part of the global training batches, from `position` on (see the module docstring).

    `next_batch()` -> {"image": uint8 (B / processes, S, S, 3), "label": int32, "skipped": int32 (unreadable
    images passed over for each example)}. `state_dict()` / `load_state_dict()` as `BatchLoader`'s.
    """

    def __init__(self, split: imf.Split, size: int, global_batch_size: int, seed: int, *,
                 shard: tuple[int, int] = (0, 1), workers: int = 0, threads: int = 2, position: int = 0,
                 max_batches: int = 2 ** 40):
        index, count = shard
        if global_batch_size <= 0 or global_batch_size > len(split):
            raise ValueError(f"batch_size must be in 1..{len(split)} (the training-set size), got {global_batch_size}")
        if global_batch_size % count or not 0 <= index < count:
            raise ValueError(f"global batch {global_batch_size} cannot be split into {count} equal shards")
        self.split, self.size, self.batch_size, self.seed = split, size, global_batch_size, seed
        self.shard, self.workers, self.threads, self.max_batches = (index, count), workers, threads, max_batches
        self.n, self.per_epoch = len(split), len(split) // global_batch_size
        self.position = position
        self._it: Iterator[dict] | None = None

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.shard[1]

    def _start(self) -> None:
        b = self.local_batch_size
        sample = _TrainSample(self.split, self.size, self.seed, self.batch_size, self.shard)
        self._it = _iterate(sample, self.position * b, self.max_batches * b, b, self.workers, self.threads)

    def next_batch(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._start()
        # Plain copies: worker batches arrive in shared memory that grain releases when they are dropped.
        batch = {k: np.array(v) for k, v in next(self._it).items()}
        self.position += 1
        return batch

    def _seek(self, position: int) -> None:
        self.close()  # the running worker pipeline was started at the old position
        self.position = position

    def close(self) -> None:
        """Stop the worker processes (a later `next_batch` starts new ones at `position`)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()


class ImageFolderData:
    """An ImageFolder dataset for `rnlib.train.fit`: `train` / `test` splits (the folder's train/ and val/).

    image_shape (S, S, 3); images are uint8 and `input_norm` = (mean, std) per channel of pixels / 255, applied
    on the device by the train and eval steps; `augment` is None (the augmentation runs in the input pipeline).
    """

    augment = None

    def __init__(self, root: str, train: imf.Split, test: imf.Split, classes: list[str], image_size: int,
                 workers: int, threads: int, name: str = "imagenet"):
        self.root, self.splits, self.classes, self.name = root, {"train": train, "test": test}, classes, name
        self.image_size, self.workers, self.threads = image_size, workers, threads
        self.num_classes = len(classes)
        self.input_norm = (imf.IMAGENET_MEAN, imf.IMAGENET_STD)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def size(self, split: str) -> int:
        return len(self.splits[split])

    def train_loader(self, global_batch_size: int, seed: int, shard: tuple[int, int] = (0, 1),
                     position: int = 0) -> ImageFolderLoader:
        return ImageFolderLoader(self.splits["train"], self.image_size, global_batch_size, seed, shard=shard,
                                 workers=self.workers, threads=self.threads, position=position)

    def eval_batches(self, split: str, global_batch_size: int, shard: tuple[int, int] = (0, 1)
                     ) -> Iterator[dict[str, np.ndarray]]:
        """This host's slices of the padded global batches covering `split` in order, with a "mask"."""
        data = self.splits[split]
        local = global_batch_size // shard[1]
        nb = -(-len(data) // global_batch_size)
        it = _iterate(_EvalSample(data, self.image_size, global_batch_size, shard), 0, nb * local, local,
                      self.workers, self.threads)
        try:
            for batch in it:
                yield {k: np.array(v) for k, v in batch.items()}
        finally:
            if hasattr(it, "close"):
                it.close()


def _probe(split: imf.Split, size: int) -> None:
    """Decode the split's first image: a folder of non-images fails here, naming a file, not mid-run."""
    path = split.path(0)
    try:
        imf.load_eval(path, size)
    except imf.DECODE_ERRORS as e:
        raise ValueError(f"cannot read image {path!r} ({type(e).__name__}: {e}); the folder must hold JPEG "
                         "(or PNG) images") from e


def load_imagenet(data_dir: str | os.PathLike, image_size: int = 224, workers: int = 0,
                  threads: int = 2) -> ImageFolderData:
    """The tree at `data_dir` (train/<class>/*, val/<class>/*), classes = the sorted train/ sub-folders.

    FileNotFoundError / ValueError naming the path: missing or empty folder, no class folders, a class folder
    without images, val/ classes unknown to train/, a first image that cannot be decoded.
    """
    _require_grain()
    root = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"ImageNet folder {root!r} does not exist; it must hold train/<class>/*.JPEG and "
                                "val/<class>/*.JPEG")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    classes = imf.list_classes(os.path.join(root, "train"))
    train = imf.scan_split(os.path.join(root, "train"), classes)
    test = imf.scan_split(os.path.join(root, "val"), classes)
    for split in (train, test):
        _probe(split, image_size)
    return ImageFolderData(root, train, test, classes, image_size, workers, threads)
