"""Images without fastai: scikit-learn's digits as tensors, the classes and files of an image folder, and the
normalisation statistics (fastai `DataLoaders` of them are in `fast_impl.fastai.data`)."""
from __future__ import annotations

__all__ = ['digits_images', 'digit_classes', 'pick_per_class', 'NORM_STATS', 'CIFAR_URL', 'IMAGE_EXTENSIONS',
           'image_files', 'class_names', 'folder_items', 'unreadable_images', 'check_images']

import mimetypes, pathlib
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .checks import check_count
from .enums import Norm

NORM_STATS = {Norm.seed: ([0.5] * 3, [0.5] * 3),
              Norm.cifar: ([0.491, 0.482, 0.447], [0.247, 0.243, 0.261]),
              Norm.imagenet: ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
              Norm.none: None}
CIFAR_URL = 'https://s3.amazonaws.com/fast-ai-sample/cifar10.tgz'  # fastai's `URLs.CIFAR`
# the suffixes of image files, as fastai's `image_extensions` finds them
IMAGE_EXTENSIONS = {k for k, v in mimetypes.types_map.items() if v.startswith('image/')}


def digit_classes(classes) -> list[int]:
    "`classes` as a sorted list of digits, checking each is 0-9 (None: all ten)"
    if classes is None: return list(range(10))
    if isinstance(classes, int): classes = [classes]
    cs = sorted({int(c) for c in classes})
    bad = [c for c in cs if not 0 <= c <= 9]
    if bad or not cs:
        raise ValueError(f"classes must be digits 0-9 (e.g. range(5) or [5, 6, 7, 8, 9]); "
                         f"got {list(classes)}")
    return cs


def digits_images(classes: Iterable[int] | None = None, size: int = 32, n_channels: int = 3
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits of `classes` as float images `(n, n_channels, size, size)` in [0, 1] (upscaled bilinearly) and
    their labels"""
    from sklearn.datasets import load_digits
    if size < 8 or n_channels < 1:
        raise ValueError(f"size must be >= 8 and n_channels >= 1; got size={size}, n_channels={n_channels}")
    d = load_digits()
    keep = np.isin(d.target, digit_classes(classes))
    x = torch.tensor(d.images[keep], dtype=torch.float32)[:, None] / 16.
    if size != 8: x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False).clamp_(0, 1)
    return x.expand(-1, n_channels, -1, -1).contiguous(), torch.tensor(d.target[keep], dtype=torch.long)


def pick_per_class(y: torch.Tensor, n_per_class: int, seed: int = 0) -> np.ndarray:
    "Indices of `n_per_class` items of each label in `y`, drawn at random with `seed`"
    n_per_class = check_count(n_per_class, 'n_per_class')
    rng, y = np.random.default_rng(seed), np.asarray(y)
    idx = []
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        if len(where) <= n_per_class:
            raise ValueError(f"class {c} has {len(where)} images; n_per_class={n_per_class} must leave some "
                             f"to validate on")
        idx.append(rng.choice(where, n_per_class, replace=False))
    return np.sort(np.concatenate(idx))


def image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    "Image files directly in `folder`, sorted by name"
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)


def class_names(path: pathlib.Path, train: str) -> list[str]:
    "The classes: the lines of `labels.txt` where there is one (fastai's CIFAR-10), else `train`'s folders"
    labels = path / 'labels.txt'
    if labels.is_file(): return [l.strip() for l in labels.read_text().splitlines() if l.strip()]
    return sorted(d.name for d in (path / train).iterdir() if d.is_dir())


def folder_items(path: pathlib.Path, splits: tuple[str, ...], vocab: list[str], limit: int | None) -> list:
    "Image files of each class in each of `splits`, the first `limit` (by name) of each when given"
    items = []
    for split in splits:
        for c in vocab:
            files = image_files(path / split / c) if (path / split / c).is_dir() else []
            if not files:
                raise FileNotFoundError(f"{path / split / c} holds no images: each class needs some in "
                                        f"{split}/")
            items += files[:limit] if limit else files
    return items


def unreadable_images(files: Iterable[pathlib.Path]) -> list[pathlib.Path]:
    """The files of `files` that PIL cannot open and verify: not images, or a damaged header (PNG: damaged
    data too). PIL's `verify` reads no pixels (about 0.1-0.2 ms a file); a JPEG cut short shows only when
    decoded"""
    from PIL import Image
    bad = []
    for f in files:
        try:
            with Image.open(f) as im: im.verify()
        except Exception: bad.append(f)  # any failure (OSError, SyntaxError, struct.error, ...): unreadable
    return bad


def check_images(files: list[pathlib.Path], where) -> list[pathlib.Path]:
    "`files` when PIL can read each (`unreadable_images`); else one `ValueError` naming them and their number"
    bad = unreadable_images(files)
    if not bad: return files
    names = ', '.join(str(f) for f in bad[:3]) + (f' and {len(bad) - 3} more' if len(bad) > 3 else '')
    raise ValueError(f"{len(bad)} of {len(files)} image files in {where} cannot be read as images (not an "
                     f"image, or damaged): {names}; remove or replace them")
