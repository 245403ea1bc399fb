"""`AutoRGN`, the fastai callback of Auto-RGN (`fast_impl.rgn`): each optimizer step, each layer group's rate
is the rate fastai's scheduler set for this step times the group's normalised relative gradient norm."""
from __future__ import annotations

__all__ = ['AutoRGN']

import math, warnings

from fastai.callback.core import Callback
from fastai.optimizer import Optimizer
from fastcore.foundation import L

from ..rgn import RGN, Per, Updates
from .learner import group_labels


def _tensor_rates(opt: Optimizer, groups: list[list], fs: list[list[float]]) -> tuple[list, list]:
    """Param lists and hypers giving each tensor with a factor a list of its own at its group's rate x factor
    (the others stay together at the group's rate)"""
    lists, hypers = [], []
    for ps, h, f_ in zip(groups, opt.hypers, fs):
        f = dict(zip((id(p) for p in ps if p.grad is not None), f_))
        rest = [p for p in ps if math.isnan(f.get(id(p), math.nan))]
        if rest: lists.append(rest); hypers.append(h)
        for p in ps:
            x = f.get(id(p), math.nan)
            if not math.isnan(x): lists.append([p]); hypers.append({**h, 'lr': h['lr'] * x})
    return lists, hypers


class _OneStep:
    """Stands in for `opt.step` for one step: the step runs over other param lists and hypers (fastai's
    optimizer steps tensor by tensor and keys its state by tensor, so per-tensor rates need no weight copy);
    then `opt.step` is the optimizer's own again"""
    def __init__(self, opt: Optimizer, lists: list, hypers: list):
        self.opt, self.lists, self.hypers = opt, L(lists), L(hypers)
        opt.step = self

    def __call__(self, closure=None):
        opt, _ = self.opt, self.off()
        keep = opt.param_lists, opt.hypers
        opt.param_lists, opt.hypers = self.lists, self.hypers
        try: return opt.step(closure)
        finally: opt.param_lists, opt.hypers = keep

    def off(self) -> None: self.opt.__dict__.pop('step', None)


class AutoRGN(Callback):
    """Auto-RGN (Lee et al., ICLR 2023) for any fit (`fit`, `fit_one_cycle`, `fine_tune`): before every
    optimizer step, each layer group's rate = the rate fastai's schedule set for this step x ||grad|| / ||w||
    of the group divided by the largest; after the step the scheduled rates are back, so the factor never
    compounds (under `fit`'s constant rate too). Frozen groups (below `freeze_to`) are skipped: they keep
    their rate and do not enter the maximum. `per='tensor'`: the paper's one factor per tensor, as each
    tensor's own rate for the step (fastai's optimizers; a wrapped torch optimizer gets each tensor's update
    scaled, exact where the update is proportional to the rate: SGD, Adam, RMSProp).
    `.factors` is the table; `GroupStats` shows each step's factor in its `rgn` column."""
    order = 55  # after the schedulers (before_batch), before GroupStats (60) records the rates used

    def __init__(self, per='group', record: bool = True):
        self.rgn, self._saved, self._updates, self._one, self._copies = RGN(per, record), None, None, None, {}

    def before_fit(self):
        self._names = group_labels(self.learn)
        if len(self._names) == 1 and self.rgn.per is Per.group:
            warnings.warn("AutoRGN on a Learner with a single parameter group changes nothing (its factor "
                          "is always 1): split the model, e.g. discriminative_learner(dls, arch, "
                          "groups='stages'), or use AutoRGN('tensor')", stacklevel=2)

    def before_step(self):
        if not self.training: return
        self._restore()
        opt = self.learn.opt
        frozen, lrs = getattr(opt, 'frozen_idx', 0), [h['lr'] for h in opt.hypers]
        groups = [list(ps) for ps in opt.param_lists]
        fs = self.rgn.factors(groups, lrs, self._names, skip=[i < frozen for i in range(len(groups))])
        if self.rgn.per is Per.tensor:
            if getattr(type(opt), 'step', None) is Optimizer.step:  # fastai's own: steps tensor by tensor
                self._one = _OneStep(opt, *_tensor_rates(opt, groups, fs))
            else: self._updates = Updates(groups, fs, self._copies)
            return
        new = [lr if not f or math.isnan(f[0]) else lr * f[0] for lr, f in zip(lrs, fs)]
        self._saved = lrs
        opt.set_hyper('lr', new)

    def _restore(self):
        "The scheduled rates back (per tensor: each update scaled by its factor)"
        if self._saved is not None: self.learn.opt.set_hyper('lr', self._saved)
        if self._updates is not None: self._updates.apply()
        if self._one is not None: self._one.off()
        self._saved = self._updates = self._one = None

    def after_step(self): self._restore()
    def after_batch(self): self._restore()  # a step cancelled after before_step
    def after_fit(self):
        self._restore()
        self._copies = {}  # the weights' copies (per tensor) freed

    @property
    def last(self) -> list[float]:
        "The factor of each layer group in the last step (per tensor: the group's largest; NaN: skipped)"
        return self.rgn.last

    @property
    def factors(self):
        "The factors of every step: `step, group, name, tensor, rgn, factor, lr` (the scheduled rate)"
        return self.rgn.df

    def reset(self): self.rgn.reset()
