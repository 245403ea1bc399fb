"scikit-learn's digits (shipped with it, no download) as image tensors and as fastai `DataLoaders`."
from __future__ import annotations

__all__ = ['digits_images', 'digits_dls', 'pick_per_class']

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F


def _classes(classes) -> list[int]:
    "`classes` as a sorted list of digits, checking each is 0-9"
    if classes is None: return list(range(10))
    if isinstance(classes, int): classes = [classes]
    cs = sorted({int(c) for c in classes})
    bad = [c for c in cs if not 0 <= c <= 9]
    if bad or not cs:
        raise ValueError(f"classes must be digits 0-9 (e.g. range(5) or [5, 6, 7, 8, 9]); got {list(classes)}")
    return cs


def digits_images(classes: Iterable[int] | None = None, size: int = 32, n_channels: int = 3
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    "Digits of `classes` as float images `(n, n_channels, size, size)` in [0, 1] (upscaled bilinearly) and their labels"
    from sklearn.datasets import load_digits
    if size < 8 or n_channels < 1:
        raise ValueError(f"size must be >= 8 and n_channels >= 1; got size={size}, n_channels={n_channels}")
    d = load_digits()
    keep = np.isin(d.target, _classes(classes))
    x = torch.tensor(d.images[keep], dtype=torch.float32)[:, None] / 16.
    if size != 8: x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False).clamp_(0, 1)
    return x.expand(-1, n_channels, -1, -1).contiguous(), torch.tensor(d.target[keep], dtype=torch.long)


def _positive_int(v, what: str) -> int:
    "`v` when it is an int >= 1; else a `ValueError` naming `what`"
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{what} must be an int >= 1; got {v!r}")
    return int(v)


def pick_per_class(y: torch.Tensor, n_per_class: int, seed: int = 0) -> np.ndarray:
    "Indices of `n_per_class` items of each label in `y`, drawn at random with `seed`"
    n_per_class = _positive_int(n_per_class, 'n_per_class')
    rng, y = np.random.default_rng(seed), np.asarray(y)
    idx = []
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        if len(where) <= n_per_class:
            raise ValueError(f"class {c} has {len(where)} images; n_per_class={n_per_class} must leave some to validate on")
        idx.append(rng.choice(where, n_per_class, replace=False))
    return np.sort(np.concatenate(idx))


def _splits(y, n_per_class, valid_pct, seed) -> tuple[list, list]:
    "Train and valid indices: `n_per_class` labelled images per class (the rest validate), or a random `valid_pct` split"
    if n_per_class is not None: train = pick_per_class(y, n_per_class, seed)
    else:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(y))
        train = np.sort(perm[int(round(valid_pct * len(y))):])
    valid = np.setdiff1d(np.arange(len(y)), train)
    return train.tolist(), valid.tolist()


def digits_dls(classes: Iterable[int] | None = None, n_per_class: int | None = None, size: int = 32, bs: int = 32,
               seed: int = 0, valid_pct: float = 0.2, n_channels: int = 3, num_workers: int = 0, **kwargs):
    """fastai `DataLoaders` of digits `classes` (vocab: the digits, so `dls.c == len(classes)`).

    Args:
        classes: digits to keep, e.g. `range(5)` or `[5, 6, 7, 8, 9]`; all ten by default.
        n_per_class: labelled training images per class (the rest form the validation set); `None`: split `valid_pct`.
        size: image side after upscaling the 8x8 digits.
        seed: picks the training images and seeds the shuffling.
        num_workers: 0 (in memory, tiny): worker processes only add start-up time.
        kwargs: passed to `Datasets.dataloaders` (`after_batch`, `device`, ...).
    """
    _positive_int(bs, 'bs')
    if not (n_per_class is not None or 0 < valid_pct < 1):
        raise ValueError(f"valid_pct must be between 0 and 1 (exclusive), such as 0.2; got {valid_pct!r}")
    from fastai.data.core import Datasets
    from fastai.data.transforms import Categorize
    x, y = digits_images(classes, size, n_channels)
    splits = _splits(y, n_per_class, valid_pct, seed)
    tfms = [[_ItemGetter(x, image=True)], [_ItemGetter(y), Categorize(vocab=_classes(classes))]]
    dsets = Datasets(range(len(y)), tfms=tfms, splits=splits)
    dls = dsets.dataloaders(bs=bs, val_bs=max(bs, 64), num_workers=num_workers, **kwargs)
    for dl in dls.loaders: dl.rng.seed(seed)
    return dls


class _ItemGetter:
    "Transform index `i` into `t[i]` (a fastai `TensorImage` when `image`); picklable, unlike a lambda"
    def __init__(self, t: torch.Tensor, image: bool = False): self.t, self.image = t, image

    def __call__(self, i):
        if not self.image: return int(self.t[i])
        from fastai.torch_core import TensorImage
        return TensorImage(self.t[i])
