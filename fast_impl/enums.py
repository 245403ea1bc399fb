"The choices of the training job, one home each: datasets, normalisations, optimizers, schedules."
from __future__ import annotations

__all__ = ['Dataset', 'Norm', 'Opt', 'Schedule', 'choice', 'values']

from enum import Enum


class Dataset(str, Enum):
    "The datasets `train_archs` knows by name; any other `data` is an image folder"
    digits = 'digits'    # scikit-learn's 8x8 digits, embedded (no download)
    cifar10 = 'cifar10'  # CIFAR-10 through fastai's `untar_data(URLs.CIFAR)`


class Norm(str, Enum):
    "Per-channel normalisation of the images, applied to each batch"
    seed = 'seed'          # seed 003: mean 0.5 and std 0.5 per channel (pixels in [-1, 1])
    cifar = 'cifar'        # CIFAR-10's own channel statistics (fastai's `cifar_stats`)
    imagenet = 'imagenet'  # ImageNet's (torchvision's and fastai's pretrained weights)
    none = 'none'          # seed 002: pixels in [0, 1]


class Opt(str, Enum):
    "The optimizer of the training job"
    adam = 'adam'  # fastai's Adam (its defaults: betas 0.9, 0.99, weight decay 0.01)
    sgd = 'sgd'    # SGD with momentum 0.9 (seed 003)


class Schedule(str, Enum):
    "The learning-rate schedule of the training job"
    one_cycle = 'one_cycle'  # fastai's `fit_one_cycle`
    constant = 'constant'    # one rate throughout, as the seeds train (`fit`)


def values(kind: type[Enum]) -> list[str]:
    "The names a user may write for `kind`, in order"
    return [m.value for m in kind]


def choice(kind: type[Enum], v, what: str) -> Enum:
    "`v` (a name or a member) as a member of `kind`; else a `ValueError` naming `what` and the valid names"
    try: return kind(v)
    except ValueError:
        raise ValueError(f"{what} must be one of {', '.join(values(kind))}; got {v!r}") from None
