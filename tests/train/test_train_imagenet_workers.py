"""Decoding in grain worker processes gives the same batches as decoding in this process (the random crop of an
image depends on its stream position, not on which worker decodes it). Starting workers costs ~10-30 s here."""
import numpy as np
import pytest

pytest.importorskip("grain")

from rnlib.train import load_imagenet  # noqa: E402
from imagenet_tree import make_tree  # noqa: E402


def test_two_workers_match_in_process_decoding(tmp_path):
    data = load_imagenet(make_tree(tmp_path), image_size=24)
    ref = data.train_loader(6, seed=7, position=1)
    want = [ref.next_batch() for _ in range(5)]
    data.workers = 2
    loader = data.train_loader(6, seed=7, position=1)
    try:
        got = [loader.next_batch() for _ in range(5)]
    finally:
        loader.close()
    for g, w in zip(got, want):
        assert type(g["image"]) is np.ndarray  # a plain copy, not a view of grain's shared memory
        for k in ("image", "label", "skipped"):
            np.testing.assert_array_equal(g[k], w[k])
