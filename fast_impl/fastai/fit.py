"""The fastai side of the training job (`fast-impl train`): seed 003's per-epoch columns, the best weights
kept, plain per-epoch lines outside a terminal, the optimizer by name, and the Learner that holds them."""
from __future__ import annotations

__all__ = ['EpochRecorder', 'KeepBest', 'plain_table', 'opt_func', 'train_learner', 'reproducible']

import functools, pathlib, sys, time

from fastai.callback.progress import ProgressCallback
from fastai.callback.tracker import SaveModelCallback, TrackerCallback
from fastai.learner import AvgLoss, Recorder
from fastai.metrics import accuracy
from fastai.optimizer import SGD, Adam
from fastai.torch_core import set_seed
from fastcore.foundation import L
from fastprogress.fastprogress import IN_NOTEBOOK

from ..enums import Opt
from .learner import EpochLines, discriminative_learner


class EpochRecorder(Recorder):
    """fastai's `Recorder` with seed 003's columns: each epoch's mean training loss and accuracy (as the
    batches ran, in training mode) beside the validation loss and accuracy; epochs counted from 1; the
    seconds of each epoch in `seconds`"""
    def __init__(self, **kwargs):
        super().__init__(train_metrics=True, **kwargs)
        self.mean_loss = AvgLoss()

    @property
    def name(self) -> str: return 'recorder'  # it stands in for fastai's Recorder: `learn.recorder`

    @property
    def _train_mets(self):
        if getattr(self, 'cancel_train', False): return L()
        return L(self.smooth_loss, self.mean_loss) + self.metrics  # the smoothed loss feeds the progress bar

    def before_fit(self):
        super().before_fit()
        self.seconds = []

    def before_epoch(self):
        super().before_epoch()
        self.log = L(self.epoch + 1)

    def after_train(self): self.log += [_value(m) for m in self._train_mets[1:]]  # the mean, not the smoothed

    def after_epoch(self):
        self.seconds.append(time.time() - self.start_epoch)
        super().after_epoch()


class KeepBest(SaveModelCallback):
    "fastai's `SaveModelCallback` keeping the weights of the best validation accuracy; epochs counted from 1"
    def __init__(self, fname: str = 'best'): super().__init__(monitor='valid_accuracy', fname=fname)

    def after_epoch(self):
        TrackerCallback.after_epoch(self)
        if not self.new_best: return
        print(f'epoch {self.epoch + 1}: best valid_accuracy so far ({self.best:.4f}), weights saved',
              flush=True)
        self._save(self.fname)


def _value(metric):
    v = metric.value
    return v.item() if hasattr(v, 'item') else v


def plain_table(learn):
    "Outside a terminal or notebook, no progress bars: the per-epoch table as plain lines"
    if IN_NOTEBOOK or sys.stdout.isatty(): return
    learn.remove_cb(ProgressCallback)
    learn.logger = EpochLines(learn)


def opt_func(opt: Opt):
    "fastai's optimizer for `opt`: Adam (its defaults), or SGD with momentum 0.9 (seed 003)"
    return functools.partial(SGD, mom=0.9) if Opt(opt) is Opt.sgd else Adam


def reproducible(seed: int):
    "Seed Python, numpy and torch, with deterministic cuDNN (fastai's `set_seed(seed, reproducible=True)`)"
    set_seed(seed, reproducible=True)


def train_learner(dls, arch, folder: pathlib.Path, groups='stages', pretrained=False, normalize: bool = True,
                  opt: Opt = Opt.adam, **kwargs):
    """A discriminative Learner for `arch` (builder arguments `kwargs`): accuracy, seed 003's columns, the
    best weights kept in `folder`; with `pretrained` weights unfrozen (every group trains at its own rate)"""
    learn = discriminative_learner(dls, arch, groups=groups, pretrained=pretrained, normalize=normalize,
                                   metrics=accuracy, opt_func=opt_func(opt), path=folder, model_dir='.',
                                   **kwargs)
    learn.remove_cb(learn.recorder)
    learn.add_cbs([EpochRecorder(), KeepBest()])
    if pretrained: learn.unfreeze()
    return learn
