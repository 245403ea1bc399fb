"""Fine-tuning recipes on scikit-learn's digits (pretrain on 0-4, fine-tune on 5-9 from a few labelled images
per class), the ones `fast-impl demo` compares: each `(dls, weights file, epochs, lr) -> (Learner, fit)` with
the same model, weights, epochs and batch size; pretraining; one scored run."""
from __future__ import annotations

__all__ = ['SkipValid', 'pretrain', 'pretrained_learner', 'scratch', 'one_lr', 'fastai_fine_tune',
           'fastai_model_stages', 'stages_slice', 'stages_decay', 'run']

import time

import torch
from fastai.callback.core import Callback, CancelValidException
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from fastai.vision.learner import model_meta, vision_learner
from fastai.vision.models.xresnet import xresnet18

from ..archs import read_weights
from ..lr import layer_decay
from ..split import stage_splitter
from .data import digits_dls
from .learner import discriminative_learner
from .xresnet import xresnet18_half


class SkipValid(Callback):
    "Skip the per-epoch validation: every method is scored once, at the end"
    def before_validate(self): raise CancelValidException()


def pretrain(path, epochs: int, lr: float, bs: int, arch=xresnet18_half) -> float:
    "Train `arch` on digits 0-4 and save the weights to `path`; returns the held-out accuracy"
    set_seed(0)
    learn = discriminative_learner(digits_dls(range(5), bs=bs, seed=0), arch, metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, lr)
        acc = float(learn.validate()[1])
    torch.save(learn.model.state_dict(), path)
    return acc


def pretrained_learner(dls, path, arch=xresnet18_half, groups='stages'):
    "fast_impl's Learner on the pretrained weights in `path` (the arch's own head, `groups`), unfrozen"
    learn = discriminative_learner(dls, arch, groups=groups, pretrained=path, normalize=False,
                                   metrics=accuracy)
    learn.unfreeze()
    return learn

# ------------------------------------------------------- the methods: (dls, weights, E, lr) -> (Learner, fit)


def scratch(dls, path, E, lr, arch=xresnet18_half):
    "No pretraining: every group at `lr`"
    learn = discriminative_learner(dls, arch, metrics=accuracy)
    return learn, lambda: learn.fit_one_cycle(E, lr, cbs=SkipValid())


def one_lr(dls, path, E, lr, arch=xresnet18_half):
    "Pretrained, the whole model at one LR"
    learn = discriminative_learner(dls, arch, pretrained=path, normalize=False, metrics=accuracy)
    learn.unfreeze()
    return learn, lambda: learn.fit_one_cycle(E, lr, cbs=SkipValid())


def _fastai_learner(dls, path, splitter=None):
    """fastai's `vision_learner` (its cut, head and, unless given, `model_meta` split) with the pretrained
    body loaded"""
    model_meta.setdefault(xresnet18_half, model_meta[xresnet18])  # fastai's own xresnet cut and 3-group split
    kw = {} if splitter is None else dict(splitter=splitter)
    learn = vision_learner(dls, xresnet18_half, pretrained=False, normalize=False, metrics=accuracy, **kw)
    body = learn.model[0]
    own = body.state_dict()
    body.load_state_dict({k: v for k, v in read_weights(path).items() if k in own})  # strict: all must fit
    return learn


def fastai_fine_tune(dls, path, E, lr, arch=xresnet18_half):
    "fastai's default: vision_learner (3 groups from model_meta, fastai's head) and `fine_tune`"
    learn = _fastai_learner(dls, path)
    return learn, lambda: learn.fine_tune(E - 1, base_lr=lr, freeze_epochs=1, cbs=SkipValid())


def fastai_model_stages(dls, path, E, lr, arch=xresnet18_half):
    "fastai's vision_learner model and head, split by fast_impl's `stage_splitter`, `fine_tune`"
    learn = _fastai_learner(dls, path, splitter=stage_splitter())
    return learn, lambda: learn.fine_tune(E - 1, base_lr=lr, freeze_epochs=1, cbs=SkipValid())


def stages_slice(dls, path, E, lr, arch=xresnet18_half):
    "fast_impl: stage groups, `slice(lr/10, lr)` spread over them (fastai gives `slice(lr)`'s body lr/10)"
    learn = pretrained_learner(dls, path, arch)
    return learn, lambda: learn.fit_one_cycle(E, slice(lr / 10, lr), cbs=SkipValid())


def stages_decay(dls, path, E, lr, arch=xresnet18_half, decay=0.75):
    "fast_impl: stage groups, `layer_decay(lr, learn, 0.75)`"
    learn = pretrained_learner(dls, path, arch)
    return learn, lambda: learn.fit_one_cycle(E, layer_decay(lr, learn, decay), cbs=SkipValid())


def run(method, seed: int, path, n_per_class: int, E: int, lr: float, bs: int,
        arch=xresnet18_half, dls=None) -> tuple[float, float, int]:
    """Accuracy on the unlabelled digits 5-9, seconds and number of groups of one fine-tuning run of `method`;
    `dls`: a function `(seed, n_per_class, bs) -> DataLoaders` of another task"""
    t = time.perf_counter()
    set_seed(seed)
    dls = (dls or _digits_5_9)(seed, n_per_class, bs)
    learn, fit = method(dls, path, E, lr, arch=arch)
    with learn.no_bar(), learn.no_logging():
        fit()
        acc = float(learn.validate()[1])
    return acc, time.perf_counter() - t, len(learn.opt.param_lists)


def _digits_5_9(seed: int, n_per_class: int, bs: int):
    return digits_dls(range(5, 10), n_per_class=n_per_class, bs=bs, seed=seed)
