"""Data as fastai `DataLoaders`: scikit-learn's digits (shipped with it, no download), image folders, and
CIFAR-10 through fastai's `untar_data` (seeds 002 and 003)."""
from __future__ import annotations

__all__ = ['digits_images', 'digits_dls', 'pick_per_class', 'cifar10_dls', 'cifar10_path', 'folder_dls',
           'Norm', 'CIFAR_URL']

import os, pathlib, socket
from contextlib import contextmanager
from enum import Enum
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

# ---------------------------------------------------------------- image folders and CIFAR-10


class Norm(str, Enum):
    "Per-channel normalisation of the images, applied to each batch"
    seed = 'seed'          # seed 003: mean 0.5 and std 0.5 per channel (pixels in [-1, 1])
    cifar = 'cifar'        # CIFAR-10's own channel statistics (fastai's `cifar_stats`)
    imagenet = 'imagenet'  # ImageNet's (torchvision's and fastai's pretrained weights)
    none = 'none'          # seed 002: pixels in [0, 1]


NORM_STATS = {Norm.seed: ([0.5] * 3, [0.5] * 3),
              Norm.cifar: ([0.491, 0.482, 0.447], [0.247, 0.243, 0.261]),
              Norm.imagenet: ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
              Norm.none: None}
CIFAR_URL = 'https://s3.amazonaws.com/fast-ai-sample/cifar10.tgz'  # fastai's `URLs.CIFAR`
_SMALL = 2000  # fewer images load in the main process: worker start-up would cost more than it saves


def _norm(norm) -> Norm:
    "`norm` as a `Norm` (a name or the enum); else a `ValueError` listing the valid names"
    try: return Norm(norm)
    except ValueError:
        raise ValueError(f"norm must be one of {', '.join(n.value for n in Norm)}; got {norm!r}") from None


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    "Image files directly in `folder`, sorted by name"
    from fastai.data.transforms import image_extensions
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in image_extensions)


def _class_names(path: pathlib.Path, train: str) -> list[str]:
    "The classes: the lines of `labels.txt` where there is one (fastai's CIFAR-10), else `train`'s folders"
    labels = path / 'labels.txt'
    if labels.is_file(): return [l.strip() for l in labels.read_text().splitlines() if l.strip()]
    return sorted(d.name for d in (path / train).iterdir() if d.is_dir())


def _folder_items(path: pathlib.Path, splits: tuple[str, str], vocab: list[str], limit: int | None) -> list:
    "Image files of each class in both `splits`, the first `limit` (by name) of each when given"
    items = []
    for split in splits:
        for c in vocab:
            files = _image_files(path / split / c) if (path / split / c).is_dir() else []
            if not files:
                raise FileNotFoundError(f"{path / split / c} holds no images: each class needs some in "
                                        f"{split}/")
            items += files[:limit] if limit else files
    return items


def folder_dls(path, train: str = 'train', valid: str = 'valid', size: int = 32, bs: int = 64,
               limit: int | None = None, norm='none', seed: int = 0, device=None,
               num_workers: int | None = None):
    """fastai `DataLoaders` of an image folder: `path/train/CLASS/*` to train on, `path/valid/CLASS/*` to
    validate on (classes from `labels.txt` when there is one), resized to `size`; `limit` images per class
    (the first by name) in each; `norm` a `Norm` name; `num_workers` None: none for a small set, else
    fastai's default"""
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import GrandparentSplitter, Normalize, parent_label
    from fastai.vision.augment import Resize
    from fastai.vision.data import ImageBlock
    path, stats, size = pathlib.Path(path), NORM_STATS[_norm(norm)], _positive_int(size, 'size')
    if limit is not None: limit = _positive_int(limit, 'limit')
    vocab = _class_names(path, train)
    items = _folder_items(path, (train, valid), vocab, limit)
    block = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab=vocab)), get_y=parent_label,
                      item_tfms=Resize(size), splitter=GrandparentSplitter(train, valid),
                      batch_tfms=[Normalize.from_stats(*stats)] if stats else None)
    if num_workers is None and len(items) < _SMALL: num_workers = 0
    kw = {} if num_workers is None else {'num_workers': num_workers}
    dls = block.dataloaders(items, path=path, bs=_positive_int(bs, 'bs'), device=device, **kw)
    for dl in dls.loaders: dl.rng.seed(seed)
    return dls


def _fastai_folders() -> tuple[pathlib.Path, pathlib.Path]:
    "fastai's data and archive folders as `untar_data` finds them (`FASTAI_HOME`, config.ini), creating none"
    from fastcore.xtras import Config
    cfg = Config(os.getenv('FASTAI_HOME', '~/.fastai'), 'config.ini', save=False,
                 create=dict(data='data', archive='archive'))  # fastai's defaults
    return cfg.path('data'), cfg.path('archive')


@contextmanager
def _socket_timeout(seconds: float):
    "Sockets opened in the block give up after `seconds` without data: a stalled download fails, never hangs"
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds if old is None else old)
    try: yield
    finally: socket.setdefaulttimeout(old)


def _missing(folder: pathlib.Path, archive: pathlib.Path, why: str) -> str:
    return (f"CIFAR-10 is not in fastai's data folder ({folder}) nor its archive ({archive}), and {why}: "
            f"download {CIFAR_URL} where there is a network and put it at {archive} (or extract it into "
            f"{folder.parent}); FASTAI_HOME moves both folders")


def cifar10_path(download: bool = True) -> pathlib.Path:
    """The CIFAR-10 folder (`train/CLASS/*.png`, `test/CLASS/*.png`, `labels.txt`) from fastai's
    `untar_data(URLs.CIFAR)`: read from fastai's data folder when it is there, else extracted from fastai's
    archive folder or downloaded. Not there and no network (or `download=False`): a one-line
    `FileNotFoundError` saying where to put it, within seconds"""
    from .archs import _reachable
    data, archive = _fastai_folders()
    folder, tgz = data / 'cifar10', archive / 'cifar10.tgz'
    if not (folder.is_dir() or tgz.is_file()):
        if not download: raise FileNotFoundError(_missing(folder, tgz, 'download=False'))
        if not _reachable(CIFAR_URL, 5):
            raise FileNotFoundError(_missing(folder, tgz, 'there is no network'))
    from fastai.data.external import URLs, fastai_cfg, untar_data
    fastai_cfg.cache_clear()  # fastai keeps the first FASTAI_HOME it read; it may have changed since
    with _socket_timeout(30): path = untar_data(URLs.CIFAR)
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
    if limit is not None: _positive_int(limit, 'limit')
    _norm(norm)  # bad arguments fail before the dataset is looked for
    return folder_dls(cifar10_path(download), 'train', 'test', size=size, bs=bs, limit=limit, norm=norm,
                      seed=seed, device=device, num_workers=num_workers)
