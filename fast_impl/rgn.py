"""Auto-RGN (Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts", ICLR 2023): each
step, each layer group's rate is the scheduled rate times its relative gradient norm ||g|| / ||w|| divided by
the largest one. `RGN` is the pure logic (no optimizer, no fastai); `RGNScaler` drives a torch optimizer in a
plain loop; `fast_impl.fastai.AutoRGN` is the fastai callback over the same logic."""
from __future__ import annotations

__all__ = ['Per', 'RGN', 'RGNScaler', 'Updates', 'relative_grad_norms', 'rgn_factors', 'layer_group_index']

import math
from enum import Enum

import torch

from .enums import choice


class Per(str, Enum):
    "What one Auto-RGN factor covers"
    group = 'group'    # one factor per layer group: ||grad|| / ||w|| over the group's tensors together
    tensor = 'tensor'  # the paper's version: one factor per parameter tensor


def _live(ps) -> list[torch.Tensor]:
    "The tensors of `ps` that train this step: those with a gradient"
    return [p for p in ps if p.grad is not None]


def _stack(norms: list[torch.Tensor]) -> torch.Tensor:
    "One float tensor of the scalar `norms` (on the first one's device)"
    dev = norms[0].device
    return torch.stack([n.to(dev, torch.float32) for n in norms])


def relative_grad_norms(groups: list[list[torch.Tensor]], per='group') -> list[list[float]]:
    """||grad|| / ||w|| of each group of tensors (`per='group'`: one value over the group's tensors with a
    gradient; `per='tensor'`: one per such tensor), in one pass and one device sync; [] for a group without
    gradients; NaN where ||w|| is 0 (a zero tensor has no scale to be relative to) or the gradient is not
    finite"""
    per = choice(Per, per, 'per')
    live = [_live(ps) for ps in groups]
    flat = [p for ps in live for p in ps]
    if not flat: return [[] for _ in groups]
    with torch.no_grad():
        g = _stack(torch._foreach_norm([p.grad for p in flat]))
        w = _stack(torch._foreach_norm([p.detach() for p in flat]))
        if per is Per.group:
            idx = torch.tensor([i for i, ps in enumerate(live) for _ in ps], device=g.device)
            g = torch.zeros(len(groups), device=g.device).index_add_(0, idx, g * g).sqrt()
            w = torch.zeros(len(groups), device=w.device).index_add_(0, idx, w * w).sqrt()
        r = torch.where((w > 0) & g.isfinite(), g / w, torch.full_like(g, math.nan)).tolist()
    if per is Per.group: return [[x] if ps else [] for x, ps in zip(r, live)]
    out, i = [], 0
    for ps in live: out.append(r[i:i + len(ps)]); i += len(ps)
    return out


def rgn_factors(rgns: list[list[float]], skip: list[bool] | None = None) -> list[list[float]]:
    """Each value of `rgns` divided by the largest over the groups not in `skip` (the normalised RGN, in
    [0, 1]); NaN for skipped groups; 1 where a value is NaN (no scale: the scheduled rate) or where every
    gradient is 0"""
    skip = skip or [False] * len(rgns)
    top = max((x for r, s in zip(rgns, skip) if not s for x in r if not math.isnan(x)), default=0.)
    def f(x): return 1. if math.isnan(x) or top == 0 else x / top
    return [[math.nan] * len(r) if s else [f(x) for x in r] for r, s in zip(rgns, skip)]


def layer_group_index(param_groups: list[dict]) -> list[int]:
    """The layer group of each optimizer group: groups sharing a 'group' key (`fast_impl.param_groups`: the
    parameters with and without weight decay of one layer group) are one; a group without it is its own"""
    keys, out = {}, []
    for i, g in enumerate(param_groups): out.append(keys.setdefault(g.get('group', ('own', i)), len(keys)))
    return out


class RGN:
    """Auto-RGN's state between steps: `factors(groups, lrs, skip)` gives this step's factors and records
    them; `.df` is the table (`step, group, name, tensor, rgn, factor, lr`: the scheduled rate; the rate
    used is `lr * factor`), `.last` the factor of each group in the last step (per tensor: the group's
    largest)"""
    columns = ['step', 'group', 'name', 'tensor', 'rgn', 'factor', 'lr']

    def __init__(self, per='group', record: bool = True):
        self.per, self.record, self.rows, self.n, self.last = choice(Per, per, 'per'), record, [], 0, []

    def factors(self, groups: list[list[torch.Tensor]], lrs: list[float], names: list[str] | None = None,
                skip: list[bool] | None = None) -> list[list[float]]:
        """The factors of this step, per group: one (`per='group'`) or one per tensor with a gradient; NaN
        for the groups in `skip` (frozen) and those without gradients or with a rate of 0"""
        rgns = relative_grad_norms(groups, self.per)
        skip = [bool(s) or not r or not lr for s, r, lr in zip(skip or [False] * len(groups), rgns, lrs)]
        fs = rgn_factors(rgns, skip)
        self.last = [max(f, default=math.nan) for f in fs]
        if self.record:
            names = names or [f'group {i + 1}' for i in range(len(groups))]
            t = None if self.per is Per.group else 0
            for i, (r, f, lr) in enumerate(zip(rgns, fs, lrs)):
                self.rows += [(self.n, i, names[i], t if t is None else j, x, y, float(lr))
                              for j, (x, y) in enumerate(zip(r, f))]
        self.n += 1
        return fs

    def reset(self): self.rows, self.n, self.last = [], 0, []

    @property
    def df(self):
        "The recorded factors: `step, group, name, tensor` (per tensor: its index in the group), `rgn`, ..."
        import pandas as pd
        return pd.DataFrame(self.rows, columns=self.columns)


class Updates:
    """Per-tensor factors applied to a step's updates: w <- w_before + factor * (w_after - w_before); the
    weights before the step are copied into `buffers` (tensor -> its copy), kept from step to step by the
    caller so that no step allocates"""

    def __init__(self, groups: list[list[torch.Tensor]], fs: list[list[float]], buffers: dict | None = None):
        pairs = [(p, f) for ps, f_ in zip(groups, fs) for p, f in zip(_live(ps), f_)
                 if not math.isnan(f) and f != 1.]
        self.ps, self.fs = [p for p, _ in pairs], [f for _, f in pairs]
        buffers = {} if buffers is None else buffers
        for p in self.ps:
            if p not in buffers or buffers[p].shape != p.shape: buffers[p] = torch.empty_like(p.detach())
        self.before = [buffers[p] for p in self.ps]
        if self.ps:
            with torch.no_grad(): torch._foreach_copy_(self.before, [p.detach() for p in self.ps])

    def apply(self) -> None:
        "Scale the update each tensor just got by its factor"
        if not self.ps: return
        with torch.no_grad():  # now + (1 - f) * (before - now) = before + f * (now - before), in place
            torch._foreach_lerp_([p.detach() for p in self.ps], self.before, [1. - f for f in self.fs])
        self.ps = self.before = []


def _check_optimizer(opt) -> None:
    if not (isinstance(getattr(opt, 'param_groups', None), list) and callable(getattr(opt, 'step', None))):
        raise TypeError(f"RGNScaler needs a torch optimizer (with param_groups and step); got {opt!r:.60}")
    if not callable(getattr(opt, 'register_step_post_hook', None)):
        raise TypeError(f"RGNScaler needs a torch.optim.Optimizer (it restores the scheduled rates after "
                        f"each step through register_step_post_hook); got {type(opt).__name__}")


class RGNScaler:
    """Auto-RGN for a plain PyTorch loop: call `scaler()` between `loss.backward()` and `optimizer.step()`.
    Each layer group's rate becomes the rate the optimizer holds (the one your scheduler set) times its
    normalised RGN, for that step only: a hook restores the scheduled rates after `optimizer.step()`, so
    schedulers that read the current rate (StepLR, CosineAnnealingLR) never see the factor and it never
    compounds. Frozen groups (no gradients, or a rate of 0) are skipped. `per='tensor'` (the paper's): one
    factor per tensor, applied by scaling each tensor's update (exact for optimizers whose update is
    proportional to the rate: SGD, Adam, AdamW, RMSprop, ...). `.factors` is the table of factors, `.remove()`
    takes the hook off. Layer groups: `fast_impl.param_groups`' `group` keys, else each optimizer group."""

    def __init__(self, optimizer, per='group', record: bool = True):
        _check_optimizer(optimizer)
        self.opt, self.rgn, self._saved, self._updates = optimizer, RGN(per, record), None, None
        self._copies = {}  # per tensor: each weight's copy before the step, reused
        self._hook = optimizer.register_step_post_hook(lambda *_: self.restore())

    def _layers(self) -> tuple[list[list[int]], list[str]]:
        "The optimizer groups of each layer group, and the layer groups' names"
        pgs, idx = self.opt.param_groups, layer_group_index(self.opt.param_groups)
        members = [[] for _ in range(max(idx, default=-1) + 1)]
        for i, k in enumerate(idx): members[k].append(i)
        names = [pgs[m[0]].get('name', f'group {k + 1}') for k, m in enumerate(members)]
        return members, names

    @property
    def names(self) -> list[str]:
        "The layer groups' names ('stem' ... 'head' from `param_groups`; else 'group 1', ...)"
        return self._layers()[1]

    def __call__(self) -> list[float]:
        "Set this step's rates from the gradients; the factor of each layer group (NaN: skipped)"
        self.restore()  # a step that never came (e.g. GradScaler skipped it) leaves nothing behind
        pgs = self.opt.param_groups
        members, names = self._layers()
        groups = [[p for i in m for p in pgs[i]['params']] for m in members]
        lrs = [max(float(pgs[i]['lr']) for i in m) for m in members]
        fs = self.rgn.factors(groups, lrs, names)
        if self.rgn.per is Per.tensor: self._updates = Updates(groups, fs, self._copies)
        else:
            self._saved = {}  # optimizer group -> (scheduled rate, the rate set)
            for m, (f,) in zip(members, [f or [math.nan] for f in fs]):
                if math.isnan(f): continue
                for i in m:
                    self._saved[i] = (pgs[i]['lr'], pgs[i]['lr'] * f)
                    pgs[i]['lr'] = self._saved[i][1]
        return self.rgn.last

    def restore(self) -> None:
        "After the step: the scheduled rates back (per tensor: the updates scaled); called by the hook"
        pgs = self.opt.param_groups
        for i, (lr, set_) in (self._saved or {}).items():
            if pgs[i]['lr'] is set_: pgs[i]['lr'] = lr  # unless something set another rate since
        if self._updates is not None: self._updates.apply()
        self._saved = self._updates = None

    @property
    def factors(self):
        "The factors of every step: `step, group, name, tensor, rgn, factor, lr` (the scheduled rate)"
        return self.rgn.df

    def remove(self) -> None:
        "Take the step hook off the optimizer (the rates stay as scheduled); the weights' copies freed"
        self.restore()
        self._hook.remove()
        self._copies = {}
