"""Small ImageFolder trees of random JPEGs for the ImageNet pipeline tests (not part of the library)."""
from __future__ import annotations

import os

import numpy as np


def make_tree(root, classes: int = 3, train_per_class: int = 8, val_per_class: int = 3, seed: int = 0,
              sizes: tuple[tuple[int, int], ...] = ((48, 40), (36, 52), (64, 64))) -> str:
    """root/train/cNN/*.JPEG and root/val/cNN/*.JPEG; images of a few sizes whose colour depends on the class
    (so a tiny net can learn something), plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = os.path.join(root, split, f"c{c:02d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per):
                w, h = sizes[(i + c) % len(sizes)]
                base = np.array([255 * (c == k % classes) for k in range(3)], np.float64) * 0.6 + 40
                pix = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pix).save(os.path.join(folder, f"img_{i:03d}.JPEG"), quality=90)
    return os.fspath(root)
