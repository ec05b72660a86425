"""Images/s of the ImageNet input pipeline (`rnlib.train.load_imagenet`): JPEG decode + random-resized crop + flip,
batched, for a number of worker processes, so a run can be judged input- or compute-bound (compare with the
train suite's images/s for the model).

    python -m benchmarks.input_pipeline                         # a generated tree of ImageNet-sized JPEGs
    python -m benchmarks.input_pipeline --data-dir ~/imagenet --workers 0 4 8 --batches 50

Without --data-dir it writes a temporary tree of random-content JPEGs of ImageNet's typical size (500 x 375,
quality 90; random noise compresses worse than photos, so decoding is somewhat slower than on real images).
Each setting first takes `--warmup` batches (worker start-up, first reads) and then times `--batches` batches.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def make_jpeg_tree(root: str, images: int, classes: int = 10, size: tuple[int, int] = (500, 375),
                   seed: int = 0) -> str:
    """root/{train,val}/cNNN/*.JPEG with `images` training images (and a few for val)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    # Smooth colour fields plus noise: closer to photo statistics than pure noise, still cheap to make.
    yy, xx = np.mgrid[0:h, 0:w]
    for split, n in (("train", images), ("val", classes)):
        for i in range(n):
            c = i % classes
            folder = os.path.join(root, split, f"c{c:03d}")
            os.makedirs(folder, exist_ok=True)
            f = rng.uniform(5, 60, 3)
            pix = 128 + 60 * np.sin(xx[..., None] / f + yy[..., None] / f[::-1] + rng.uniform(0, 6, 3))
            pix = np.clip(pix + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pix).save(os.path.join(folder, f"{split}_{i:06d}.JPEG"), quality=90)
    return root


def measure(data_dir: str, workers: int, batch_size: int, image_size: int, batches: int, warmup: int,
            threads: int) -> dict:
    from rnlib.train import load_imagenet

    data = load_imagenet(data_dir, image_size=image_size, workers=workers, threads=threads)
    loader = data.train_loader(batch_size, seed=0)
    try:
        t0 = time.perf_counter()
        for _ in range(warmup):
            loader.next_batch()
        t1 = time.perf_counter()
        for _ in range(batches):
            loader.next_batch()
        t2 = time.perf_counter()
    finally:
        loader.close()
    return {"workers": workers, "threads": threads, "batch_size": batch_size, "image_size": image_size,
            "batches": batches, "images_per_s": batches * batch_size / (t2 - t1), "startup_s": t1 - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.input_pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="an ImageFolder tree (default: generate one)")
    ap.add_argument("--images", type=int, default=256, help="generated training images (default: %(default)s)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts (default: 0 2)")
    ap.add_argument("--threads", type=int, default=2, help="read threads per worker (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    ap.add_argument("--image-size", type=int, default=224, help="crop size (default: %(default)s)")
    ap.add_argument("--batches", type=int, default=8, help="timed batches per setting (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches first (default: %(default)s)")
    args = ap.parse_args(argv)
    print(f"input pipeline: {os.cpu_count()} CPUs, batch {args.batch_size}, crop {args.image_size}, "
          f"{args.batches} timed batches after {args.warmup}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir
        if root is None:
            t = time.perf_counter()
            root = make_jpeg_tree(tmp, args.images)
            print(f"generated {args.images} JPEGs of 500x375 in {time.perf_counter() - t:.1f} s", flush=True)
        for w in args.workers:
            r = measure(root, w, args.batch_size, args.image_size, args.batches, args.warmup, args.threads)
            print(f"workers {w:2d} x {r['threads']} threads: {r['images_per_s']:8.1f} images/s "
                  f"(start-up + {args.warmup} warm-up batches {r['startup_s']:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
