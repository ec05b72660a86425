"""ImageFolder trees (`split/<class>/<image>`): scanning with clear errors, JPEG decoding and the standard
ImageNet transforms, in numpy and Pillow only (this code runs in the input pipeline's worker processes).

Transforms (output uint8 (S, S, 3); the per-channel normalisation happens on the device, see `IMAGENET_MEAN`):
* train: random-resized crop (area 8-100 % of the image, aspect ratio 3/4-4/3, torchvision's 10-try rule with a
  centre-crop fallback) resized to S x S, then a horizontal flip with probability 1/2;
* eval: resize the shorter side to round(S * 256 / 224), centre crop S x S (256 / 224 at the usual S = 224).
Crop and resize are one Pillow call (`resize(box=...)`, antialiased bilinear), and JPEGs are decoded at the
smallest DCT scale (1/2, 1/4, 1/8) that still covers the output (`Image.draft`): a large speed-up for the same
result up to the resampling filter.
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # per channel, of pixels scaled to [0, 1] (the torchvision constants)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_RESIZE_RATIO = 256 / 224


class PathTable:
    """Many relative paths in two numpy arrays (one byte blob and offsets): cheap to pickle to worker processes
    and small in memory (a Python list of 1.28M strings costs ~100 MB in every worker)."""

    def __init__(self, paths: list[str]):
        encoded = [p.encode() for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode()


@dataclasses.dataclass
class Split:
    """One split folder: `paths[i]` (relative to `root`) has class index `labels[i]`; sorted by class, file."""

    root: str
    paths: PathTable
    labels: np.ndarray  # int32 (n,)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.paths[i])


def _image_files(folder: str) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def list_classes(split_dir: str) -> list[str]:
    """Sorted class-folder names of `split_dir`; FileNotFoundError / ValueError naming the path otherwise."""
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"image folder {split_dir!r} does not exist (expected {split_dir}/<class>/*.JPEG)")
    with os.scandir(split_dir) as it:
        entries = list(it)
    if not entries:
        raise ValueError(f"image folder {split_dir!r} is empty (expected one sub-folder of images per class)")
    classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        n = sum(e.is_file() for e in entries)
        raise ValueError(f"image folder {split_dir!r} has no class folders ({n} files directly inside); the images "
                         "must sit in one sub-folder per class, split/<class>/*.JPEG (ImageNet's flat val/ folder "
                         "has to be sorted into class folders first)")
    return classes


def scan_split(split_dir: str, classes: list[str]) -> Split:
    """The images of `split_dir`/<class>/ for the given class names (label = index in `classes`).

    ValueError naming the folder when a class folder holds no image or a folder is not one of `classes`."""
    found = list_classes(split_dir)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"image folder {split_dir!r} has class folders the training split lacks: "
                         f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(split_dir, name)
        if not os.path.isdir(folder):
            continue  # an evaluation split may lack a class
        files = _image_files(folder)
        if not files:
            raise ValueError(f"class folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += [f"{name}/{f}" for f in files]
        labels += [label] * len(files)
    return Split(split_dir, PathTable(paths), np.asarray(labels, np.int32))


def _open(path: str, target: tuple[float, float] | None = None):
    """The image at `path` in RGB; a JPEG is decoded at the smallest DCT scale keeping it >= `target` (w, h)."""
    from PIL import Image

    img = Image.open(path)
    if target is not None and img.format == "JPEG":
        w, h = img.size
        img.draft("RGB", (max(1, math.ceil(target[0])), max(1, math.ceil(target[1]))))
        if img.size != (w, h):  # draft decodes at a reduced scale: keep coordinates in original pixels
            return img.convert("RGB"), w / img.size[0], h / img.size[1]
    return img.convert("RGB"), 1.0, 1.0


def crop_box_rrc(rng: np.random.Generator, w: int, h: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop box (left, top, right, bottom) in pixels of a w x h image."""
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_r))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return x, y, x + cw, y + ch
    # Fallback: the largest centred crop with the aspect ratio clamped into range.
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    x, y = (w - cw) // 2, (h - ch) // 2
    return x, y, x + cw, y + ch


def crop_box_center(w: int, h: int, size: int, resize: int) -> tuple[float, float, float, float]:
    """The box of a w x h image that 'resize the shorter side to `resize`, centre crop size x size' keeps."""
    side = size * min(w, h) / resize
    x, y = (w - side) / 2, (h - side) / 2
    return x, y, x + side, y + side


def load_train(path: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (size, size, 3): random-resized crop + random horizontal flip of the image at `path`."""
    from PIL import Image

    with Image.open(path) as probe:  # header only: the box decides how far the JPEG may be downscaled
        w, h = probe.size
    box = crop_box_rrc(rng, w, h)
    scale = max((box[2] - box[0]) / size, (box[3] - box[1]) / size, 1.0)
    img, sx, sy = _open(path, (w / scale, h / scale))
    out = img.resize((size, size), Image.BILINEAR, box=(box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy))
    arr = np.asarray(out, np.uint8)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def load_eval(path: str, size: int, resize: int | None = None) -> np.ndarray:
    """uint8 (size, size, 3): shorter side to `resize` (default round(size * 256 / 224)), centre crop."""
    from PIL import Image

    resize = resize or round(size * EVAL_RESIZE_RATIO)
    with Image.open(path) as probe:
        w, h = probe.size
    f = resize / min(w, h)
    img, sx, sy = _open(path, (w * f, h * f))
    box = crop_box_center(w, h, size, resize)
    out = img.resize((size, size), Image.BILINEAR, box=(box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy))
    return np.asarray(out, np.uint8)


# What Pillow raises for a truncated, corrupt or non-image file (OSError covers unreadable/permission errors).
DECODE_ERRORS = (OSError, ValueError, SyntaxError)
