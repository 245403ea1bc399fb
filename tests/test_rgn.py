"Auto-RGN: the rates AutoRGN and RGNScaler use, checked against gradients computed here; surgical tuning."
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fastai.callback.core import Callback
from fastai.callback.schedule import ParamScheduler
from fastai.data.core import Datasets
from fastai.data.transforms import Categorize
from fastai.optimizer import SGD
from fastai.torch_core import TensorImage

from fast_impl import AutoRGN, GroupStats, discriminative_learner, param_groups
from fast_impl.rgn import RGNScaler

torch.set_num_threads(1)


class _Get:
    def __init__(self, t, image=False): self.t, self.image = t, image
    def __call__(self, i): return TensorImage(self.t[i]) if self.image else int(self.t[i])


def dls(n_train=8, n_valid=2, bs=4):
    "Tiny random 16x16 images, 2 classes: two training batches"
    g = torch.Generator().manual_seed(0)
    n = n_train + n_valid
    x, y = torch.rand(n, 3, 16, 16, generator=g), torch.arange(n) % 2
    ds = Datasets(range(n), tfms=[[_Get(x, True)], [_Get(y), Categorize(vocab=[0, 1])]],
                  splits=[list(range(n_train)), list(range(n_train, n))])
    return ds.dataloaders(bs=bs, shuffle=False, num_workers=0)


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def expected(groups, per):
    "Normalised RGN computed here: per group (one value) or per tensor, over the tensors with a gradient"
    live = [[p for p in ps if p.grad is not None] for ps in groups]
    if per == 'group':
        r = [[math.sqrt(sum(float(p.grad.norm()) ** 2 for p in ps) / sum(float(p.detach().norm()) ** 2
                                                                          for p in ps))]
             if ps else [] for ps in live]
    else:  # a zero tensor (BatchNorm's bias at first) has no scale: the scheduled rate, not in the maximum
        r = [[float(p.grad.norm() / p.detach().norm()) if p.detach().norm() > 0 else math.nan for p in ps]
             for ps in live]
    top = max(x for rs in r for x in rs if x == x)
    return live, [[x / top if x == x else 1. for x in rs] for rs in r]


def assert_update(p, w, u):
    "`p` moved from `w` by `u`, up to 1e-3 of `u` and two roundings of the float32 weight"
    err = (p.detach() - w - u).abs()
    bad = err > 1e-3 * u.abs() + 2.5e-7 * w.abs() + 1e-12
    assert not bad.any(), f'{int(bad.sum())} of {bad.numel()} off by up to {float(err.max()):g}'


class Probe(Callback):
    """Before AutoRGN: the scheduled rates (checked against the schedule itself), weights, gradients and the
    factors computed here; after the step: every tensor moved by -scheduled rate x factor x gradient (SGD)"""
    order = 50
    def __init__(self, per): self.per, self.steps = per, 0

    def before_step(self):
        sched = [cb for cb in self.learn.cbs if isinstance(cb, ParamScheduler)]
        lrs = [h['lr'] for h in self.opt.hypers]
        want = np.broadcast_to(sched[0].scheds['lr'](self.pct_train), len(lrs)) if sched else self.lrs
        np.testing.assert_allclose(lrs, want, rtol=1e-12)  # the factor never compounds into the schedule
        live, fs = expected(self.opt.param_lists, self.per)
        self.want = [(p, p.detach().clone(), p.grad.detach().clone(), lr * f)
                     for ps, f_, lr in zip(live, fs, lrs) for p, f in
                     zip(ps, f_ if self.per == 'tensor' else f_ * len(ps))]
        self.factors = [f[0] if f else math.nan for f in fs]

    def after_batch(self):  # after every after_step (AutoRGN's per='tensor' scales the updates there)
        if not self.training: return
        for p, w, g, lr in self.want:  # the update (not the weight: a float32 weight rounds it)
            assert_update(p, w, -lr * g)
        self.steps += 1


def learner(**kw):
    return discriminative_learner(dls(), cnn(), groups=3, **{'opt_func': SGD, 'wd': 0., **kw})


@pytest.mark.parametrize('per', ['group', 'tensor'])
def test_autorgn_rates_under_fit_one_cycle(per):
    learn, probe, rgn, gs = learner(), Probe(per), AutoRGN(per), GroupStats()
    learn.fit_one_cycle(2, lr_max=[1e-3, 1e-2, 1e-1], cbs=[probe, rgn, gs])
    assert probe.steps == 4 and rgn.factors.step.nunique() == 4
    f = rgn.factors[rgn.factors.step == 3]
    assert f.factor.max() == 1 and (f.factor > 0).all() and (f.factor <= 1).all()
    if per == 'group':  # GroupStats shows the factors, and the rates used are scheduled x factor
        np.testing.assert_allclose(gs.df.rgn, rgn.factors.factor)
        np.testing.assert_allclose(gs.df.lr, rgn.factors.lr * rgn.factors.factor)
        np.testing.assert_allclose(gs.df.rgn.tail(3), probe.factors, rtol=1e-5)


@pytest.mark.parametrize('per', ['group', 'tensor'])
@pytest.mark.parametrize('wrapped', [False, True])
def test_autorgn_fit_constant_rate_never_compounds(per, wrapped):
    "fastai's SGD (per tensor: each tensor its own rate for a step) and torch's SGD wrapped (updates scaled)"
    from functools import partial
    from fastai.optimizer import OptimWrapper
    opt = dict(opt_func=partial(OptimWrapper, opt=torch.optim.SGD)) if wrapped else {}
    learn, probe = learner(**opt), Probe(per)
    probe.lrs = [1e-2, 2e-2, 5e-2]
    learn.fit(2, lr=probe.lrs, cbs=[probe, AutoRGN(per)])  # fit sets the rates once: restored every step
    assert probe.steps == 4 and [h['lr'] for h in learn.opt.hypers] == probe.lrs
    assert 'step' not in vars(learn.opt) and len(learn.opt.param_lists) == 3  # the optimizer as it was


def test_frozen_groups_untouched():
    learn, rgn, gs = learner(train_groups=[0]), AutoRGN(), GroupStats()
    before = [[p.detach().clone() for p in ps] for ps in learn.opt.param_lists]
    learn.fit_one_cycle(1, 1e-2, cbs=[rgn, gs])  # surgical: the stem only
    after = list(learn.opt.param_lists)
    assert not torch.equal(before[0][0], after[0][0])
    for b, a in zip(before[1:], after[1:]):
        assert all(torch.equal(x, y) for x, y in zip(b, a))  # bit for bit
    f = rgn.factors
    assert (f[f.group == 0].factor == 1).all() and f[f.group > 0].factor.isna().all()
    learn = learner(train_bn=False)  # fastai's freeze, its BatchNorm frozen too
    learn.freeze_to(1)
    w = [p.detach().clone() for p in learn.opt.param_lists[0]]
    rgn = AutoRGN()
    with pytest.warns(UserWarning, match='1 of 3 groups are frozen'): learn.fit(1, lr=[1e-2] * 3, cbs=rgn)
    assert all(torch.equal(x, y) for x, y in zip(w, learn.opt.param_lists[0]))
    assert rgn.factors[rgn.factors.group == 0].factor.isna().all()
    learn.unfreeze()
    assert learn.trained_groups is None


def test_bad_arguments_one_line():
    for make, err, msg in [(lambda: AutoRGN(per='layer'), ValueError, "per must be one of group, tensor"),
                           (lambda: RGNScaler([]), TypeError, 'RGNScaler needs a torch optimizer'),
                           (lambda: learner(train_groups=[3]), ValueError, r'train_groups .* 0\.\.2'),
                           (lambda: learner(train_groups=[]), ValueError, 'train_groups must be'),
                           (lambda: learner(train_groups='stem'), ValueError, 'train_groups must be')]:
        with pytest.raises(err, match=msg) as e: make()
        assert '\n' not in str(e.value)
    one = discriminative_learner(dls(), cnn(), groups=1, opt_func=SGD)
    with pytest.warns(UserWarning, match='single parameter group changes nothing'):
        one.fit(1, 1e-3, cbs=AutoRGN())


def loop(per, sched, steps=6, wd=0.):
    """A plain loop: `fast_impl.param_groups` (wd > 0: two optimizer groups per layer group), torch SGD, the
    scheduler `sched(opt)`, RGNScaler; each step checked against the gradients computed here"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(param_groups(model, 1e-1, groups=3, wd=wd, input_data=torch.randn(2, 4)), lr=1e-1)
    twin = sched(torch.optim.SGD([{'params': [torch.zeros(1)], 'lr': g['lr']} for g in opt.param_groups]))
    s = sched(opt)  # the same schedule on a twin optimizer without Auto-RGN
    scaler = RGNScaler(opt, per=per)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        layers = [[p for g in opt.param_groups if g['group'] == k for p in g['params']] for k in range(3)]
        live, fs = expected(layers, per)
        f = {id(p): x for ps, f_ in zip(live, fs)
             for p, x in zip(ps, f_ if per == 'tensor' else f_ * len(ps))}
        want = [(p, (p.detach().clone(), -g['lr'] * f[id(p)] * (p.grad + g['weight_decay'] * p.detach())))
                for g in opt.param_groups for p in g['params']]
        scaler()
        opt.step()
        for p, (w, u) in want: assert_update(p, w, u)
        s.step(); twin.optimizer.step(); twin.step()
        assert [g['lr'] for g in opt.param_groups] == [g['lr'] for g in twin.optimizer.param_groups]
    return scaler


@pytest.mark.parametrize('per', ['group', 'tensor'])
def test_rgn_scaler_plain_loop(per):
    one_cycle = torch.optim.lr_scheduler.OneCycleLR  # (no momentum cycle: plain SGD, update = lr x grad)
    sc = loop(per, lambda o: one_cycle(o, max_lr=[g['lr'] for g in o.param_groups], total_steps=6,
                                       cycle_momentum=False), wd=0.05)
    assert sc.factors.step.nunique() == 6 and sc.factors.factor.max() == 1
    sc = loop(per, lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.5))  # reads the current rate
    assert sc.opt.param_groups[-1]['lr'] == pytest.approx(0.1 * 0.5 ** 6, rel=1e-12)
    sc.remove()
