"""fastai `DataLoaders`: scikit-learn's digits (shipped with it, no download), image folders, and CIFAR-10
through fastai's `untar_data` (seeds 002 and 003)."""
from __future__ import annotations

__all__ = ['digits_dls', 'folder_dls', 'cifar10_path', 'cifar10_dls', 'add_norm']

import os, pathlib
from typing import Iterable

import numpy as np
import torch
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.core import Datasets
from fastai.data.transforms import Categorize, GrandparentSplitter, Normalize, parent_label
from fastai.torch_core import TensorImage
from fastai.vision.augment import Resize
from fastai.vision.core import PILImage
from fastai.vision.data import ImageBlock

from .. import archs
from ..checks import check_count
from ..enums import Norm, choice
from ..images import (CIFAR_URL, NORM_STATS, check_images, class_names, digit_classes, digits_images,
                      folder_items, pick_per_class)

_SMALL = 2000  # fewer images load in the main process: worker start-up would cost more than it saves


def _splits(y, n_per_class, valid_pct, seed) -> tuple[list, list]:
    """Train and valid indices: `n_per_class` labelled images per class (the rest validate), or a random
    `valid_pct` split"""
    if n_per_class is not None: train = pick_per_class(y, n_per_class, seed)
    else:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(y))
        train = np.sort(perm[int(round(valid_pct * len(y))):])
    valid = np.setdiff1d(np.arange(len(y)), train)
    return train.tolist(), valid.tolist()


def digits_dls(classes: Iterable[int] | None = None, n_per_class: int | None = None, size: int = 32,
               bs: int = 32, seed: int = 0, valid_pct: float = 0.2, n_channels: int = 3, num_workers: int = 0,
               **kwargs):
    """fastai `DataLoaders` of digits `classes` (vocab: the digits, so `dls.c == len(classes)`).

    Args:
        classes: digits to keep, e.g. `range(5)` or `[5, 6, 7, 8, 9]`; all ten by default.
        n_per_class: labelled training images per class (the rest form the validation set); `None`: split
            `valid_pct`.
        size: image side after upscaling the 8x8 digits.
        seed: picks the training images and seeds the shuffling.
        num_workers: 0 (in memory, tiny): worker processes only add start-up time.
        kwargs: passed to `Datasets.dataloaders` (`after_batch`, `device`, ...).
    """
    check_count(bs, 'bs')
    if not (n_per_class is not None or 0 < valid_pct < 1):
        raise ValueError(f"valid_pct must be between 0 and 1 (exclusive), such as 0.2; got {valid_pct!r}")
    x, y = digits_images(classes, size, n_channels)
    splits = _splits(y, n_per_class, valid_pct, seed)
    tfms = [[_ItemGetter(x, image=True)], [_ItemGetter(y), Categorize(vocab=digit_classes(classes))]]
    dsets = Datasets(range(len(y)), tfms=tfms, splits=splits)
    dls = dsets.dataloaders(bs=bs, val_bs=max(bs, 64), num_workers=num_workers, **kwargs)
    for dl in dls.loaders: dl.rng.seed(seed)
    return dls


class _ItemGetter:
    "Transform index `i` into `t[i]` (a fastai `TensorImage` when `image`); picklable, unlike a lambda"
    def __init__(self, t: torch.Tensor, image: bool = False): self.t, self.image = t, image

    def __call__(self, i): return TensorImage(self.t[i]) if self.image else int(self.t[i])


def add_norm(dls, stats):
    """Add `Normalize` with `stats` to `dls` after each batch, unless it has one already (as fastai's
    `vision_learner`)"""
    if any(isinstance(t, Normalize) for t in dls.after_batch.fs): return
    dls.add_tfms([Normalize.from_stats(*stats)], 'after_batch')
    # from_stats puts the stats on the default device (a GPU where there is one): they go where the batches go
    if dls.train.device is not None: dls.to(dls.train.device)

# ---------------------------------------------------------------- image folders and CIFAR-10


class _Decoded(PILImage):
    "fastai's `PILImage`, read from a file: one that cannot be decoded (a JPEG cut short) is one error line"
    @classmethod
    def create(cls, fn, **kwargs):
        try: return super().create(fn, **kwargs)
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ValueError(f"{fn} cannot be decoded as an image ({str(e).splitlines()[0]}); remove or "
                             f"replace it") from None


def folder_dls(path, train: str = 'train', valid: str = 'valid', size: int = 32, bs: int = 64,
               limit: int | None = None, norm='none', seed: int = 0, device=None,
               num_workers: int | None = None):
    """fastai `DataLoaders` of an image folder: `path/train/CLASS/*` to train on, `path/valid/CLASS/*` to
    validate on (classes from `labels.txt` when there is one), resized to `size`; `limit` images per class
    (the first by name) in each; `norm` a `Norm` name; `num_workers` None: none for a small set, else
    fastai's default. Every image is checked first (`check_images`): an unreadable one is one error line"""
    path, stats, size = pathlib.Path(path), NORM_STATS[choice(Norm, norm, 'norm')], check_count(size, 'size')
    if limit is not None: limit = check_count(limit, 'limit')
    vocab = class_names(path, train)
    items = check_images(folder_items(path, (train, valid), vocab, limit), path)
    block = DataBlock(blocks=(ImageBlock(_Decoded), CategoryBlock(vocab=vocab)), get_y=parent_label,
                      item_tfms=Resize(size), splitter=GrandparentSplitter(train, valid),
                      batch_tfms=[Normalize.from_stats(*stats)] if stats else None)
    if num_workers is None and len(items) < _SMALL: num_workers = 0
    kw = {} if num_workers is None else {'num_workers': num_workers}
    dls = block.dataloaders(items, path=path, bs=check_count(bs, 'bs'), device=device, **kw)
    for dl in dls.loaders: dl.rng.seed(seed)
    return dls


def _fastai_folders() -> tuple[pathlib.Path, pathlib.Path]:
    "fastai's data and archive folders as `untar_data` finds them (`FASTAI_HOME`, config.ini), creating none"
    from fastcore.xtras import Config
    cfg = Config(os.getenv('FASTAI_HOME', '~/.fastai'), 'config.ini', save=False,
                 create=dict(data='data', archive='archive'))  # fastai's defaults
    return cfg.path('data'), cfg.path('archive')


def _missing(folder: pathlib.Path, archive: pathlib.Path, why: str) -> str:
    return (f"CIFAR-10 is not in fastai's data folder ({folder}) nor its archive ({archive}), and {why}: "
            f"download {CIFAR_URL} where there is a network and put it at {archive} (or extract it into "
            f"{folder.parent}); FASTAI_HOME moves both folders")


def cifar10_path(download: bool = True) -> pathlib.Path:
    """The CIFAR-10 folder (`train/CLASS/*.png`, `test/CLASS/*.png`, `labels.txt`) from fastai's
    `untar_data(URLs.CIFAR)`: read from fastai's data folder when it is there, else extracted from fastai's
    archive folder or downloaded. Not there and no network (or `download=False`): a one-line
    `FileNotFoundError` saying where to put it, within seconds"""
    data, archive = _fastai_folders()
    folder, tgz = data / 'cifar10', archive / 'cifar10.tgz'
    if not (folder.is_dir() or tgz.is_file()):
        if not download: raise FileNotFoundError(_missing(folder, tgz, 'download=False'))
        if not archs.reachable(CIFAR_URL, 5):
            raise FileNotFoundError(_missing(folder, tgz, 'there is no network'))
    from fastai.data.external import URLs, fastai_cfg, untar_data
    fastai_cfg.cache_clear()  # fastai keeps the first FASTAI_HOME it read; it may have changed since
    with archs.fail_fast_offline(30, hub=False): path = untar_data(URLs.CIFAR)
    gone = [d for d in ('train', 'test') if not (path / d).is_dir()]
    if gone:
        raise FileNotFoundError(f"{path} is not fastai's CIFAR-10: it lacks {gone} (CLASS/*.png in each)")
    return path


def cifar10_dls(size: int = 32, bs: int = 64, limit: int | None = None, norm='seed', seed: int = 0,
                device=None, download: bool = True, num_workers: int | None = None):
    """fastai `DataLoaders` of CIFAR-10 (50,000 training images; the 10,000 test images to validate on),
    through fastai's `untar_data(URLs.CIFAR)`.

    Args:
        size: image side; the images are 32x32, seed 003 resizes them to 224 for AlexNet.
        limit: images per class, in each of train and test (the first by file name), for a quick run.
        norm: a `Norm` name: 'seed' (seed 003's mean and std 0.5), 'cifar', 'imagenet' or 'none' (seed 002).
        device: where batches go; None: fastai's default (the GPU when there is one).
        download: fetch the dataset when it is not in fastai's data folder (`FASTAI_HOME` moves it);
            offline or False, a one-line `FileNotFoundError` saying where to put it.
        num_workers: loader processes; None: none for fewer than 2,000 images, else fastai's default.
    """
    if limit is not None: check_count(limit, 'limit')
    choice(Norm, norm, 'norm')  # bad arguments fail before the dataset is looked for
    return folder_dls(cifar10_path(download), 'train', 'test', size=size, bs=bs, limit=limit, norm=norm,
                      seed=seed, device=device, num_workers=num_workers)
