"Issue 20: Lightning callbacks, real Trainer.fit on a tiny CNN on CPU: GroupMonitor, GradualUnfreezing, DDP."
from __future__ import annotations

import math, warnings

import numpy as np
import pandas as pd
import pytest
import torch
import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from fast_impl import param_groups
from fast_impl.lightning import AutoRGN, GradualUnfreezing, GroupMonitor
from fast_impl.optim import FlatRatesWarning, layer_groups

NAMES = ['stem', 'stage 1', 'head']
SCALES = [0.25, 0.5, 1.0]  # decay=0.5 over 3 groups


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 2))


def schedule(kind: str, opt, steps: int):
    "Each schedule as the docs build it (`flat`: OneCycleLR given one max_lr, the usual mistake)"
    S = torch.optim.lr_scheduler
    if kind == 'onecycle':
        return S.OneCycleLR(opt, max_lr=[g['lr'] for g in opt.param_groups], total_steps=steps)
    if kind == 'flat': return S.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    if kind == 'cosine': return S.CosineAnnealingLR(opt, T_max=steps)
    if kind == 'linear': return S.LinearLR(opt, start_factor=1.0, end_factor=0.1, total_iters=steps)
    return None


class Tiny(pl.LightningModule):
    def __init__(self, kind: str | None = None, steps: int = 8, wd: float = 0.1):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.kind, self.steps, self.wd = tiny_cnn(), kind, steps, wd

    def training_step(self, batch, i):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(param_groups(self.net, 1e-2, decay=0.5, wd=self.wd))
        sched = schedule(self.kind, opt, self.steps)
        if sched is None: return opt
        return dict(optimizer=opt, lr_scheduler=dict(scheduler=sched, interval='step'))


def loader(n: int = 16, bs: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 2, (n,), generator=g))
    return DataLoader(ds, batch_size=bs)


def fit(model, tmp_path, epochs: int = 2, cbs=(), **kw):
    kw = dict(dict(log_every_n_steps=1, logger=CSVLogger(tmp_path), enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False), **kw)
    trainer = pl.Trainer(max_epochs=epochs, accelerator='cpu', devices=1, callbacks=list(cbs), **kw)
    trainer.fit(model, loader())
    return trainer


def logged(trainer) -> pd.DataFrame:
    return pd.read_csv(f'{trainer.logger.log_dir}/metrics.csv')


@pytest.mark.parametrize('kind', ['onecycle', 'cosine', 'linear'])
def test_monitor_logs_each_group_by_name_and_rates_keep_their_ratios(kind, tmp_path):
    mon = GroupMonitor()
    with warnings.catch_warnings():
        warnings.simplefilter('error', FlatRatesWarning)
        trainer = fit(Tiny(kind), tmp_path, cbs=[mon])
    df = logged(trainer).dropna(subset=['lr/head'])
    assert {c for c in df.columns if '/' in c} == {f'{k}/{n}' for k in ('lr', 'grad_norm', 'update_ratio')
                                                   for n in NAMES}
    assert df.step.tolist() == list(range(8))  # 2 epochs x 4 batches, every step written
    lrs = df[[f'lr/{n}' for n in NAMES]].to_numpy()
    assert np.allclose(lrs / lrs[:, -1:], SCALES)  # the ratios of param_groups at every step
    assert len(set(lrs[:, -1].round(12))) > 3  # and the schedule moved them
    assert (df[[f'update_ratio/{n}' for n in NAMES]] > 0).all().all()
    assert np.allclose(df['grad_norm/head'], mon.df[mon.df.name == 'head'].grad_norm)


def test_monitor_warns_once_on_flattened_rates_and_follows_log_every(tmp_path):
    with pytest.warns(FlatRatesWarning, match=r"max_lr=\[g\['lr'\] for g in opt.param_groups\]") as rec:
        fit(Tiny('flat'), tmp_path, cbs=[GroupMonitor()])
    assert sum(issubclass(r.category, FlatRatesWarning) for r in rec) == 1
    mon = GroupMonitor()
    trainer = fit(Tiny(), tmp_path, cbs=[mon], log_every_n_steps=3)
    assert sorted(mon.df.step.unique()) == [2, 5]  # the steps Lightning writes, and only those
    assert logged(trainer).dropna(subset=['lr/stem']).step.tolist() == [2, 5]
    with pytest.warns(UserWarning, match=r'log_every_n_steps=2\)'):
        fit(Tiny(), tmp_path, epochs=1, cbs=[GroupMonitor(every=2)], log_every_n_steps=3)
    with pytest.raises(ValueError, match='every must be an int >= 1'): GroupMonitor(every=0)


class Snapshots(pl.Callback):
    "Each layer group's parameters and the stem's batch-norm statistics at the start and end of every epoch"
    def __init__(self, path=None): self.path, self.seen = path, []

    def on_fit_start(self, trainer, pl_module): self.groups = layer_groups(trainer.optimizers[0].param_groups)

    def _take(self, pl_module):
        groups = [[p.detach().clone() for p in ps] for _, ps, _ in self.groups]
        bn = pl_module.net[1]
        self.seen.append((groups, bn.running_mean.clone(), bn.num_batches_tracked.clone()))

    def on_train_epoch_start(self, trainer, pl_module): self._take(pl_module)

    def on_train_epoch_end(self, trainer, pl_module): self._take(pl_module)

    def on_fit_end(self, trainer, pl_module):
        drop = trainer.callbacks[0].freezer.drop_grads
        mon = [c.df for c in trainer.callbacks if isinstance(c, GroupMonitor)]
        if self.path: torch.save((self.seen, drop, mon), f'{self.path}/rank{trainer.global_rank}.pt')


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def check_unfreezing(seen):
    "Epoch e: groups below n-1-e bit-for-bit unchanged (norm statistics too), the others trained"
    for e in range(3):
        (g0, m0, t0), (g1, m1, t1) = seen[2 * e], seen[2 * e + 1]
        frozen = 2 - e
        assert [same(a, b) for a, b in zip(g0, g1)] == [i < frozen for i in range(3)], e
        assert torch.equal(m0, m1) == (frozen > 0) and (t1 - t0 == 0) == (frozen > 0)
    first, last = seen[0][0], seen[-1][0]
    assert not any(same(a, b) for a, b in zip(first, last))  # every group trained by the end


def test_gradual_unfreezing_one_process(tmp_path):
    snaps, model = Snapshots(), Tiny('cosine', steps=12)
    fit(model, tmp_path, epochs=3, cbs=[GradualUnfreezing(), snaps, GroupMonitor()])
    check_unfreezing(snaps.seen)
    assert all(p.requires_grad for p in model.parameters()) and not model.net[1]._forward_pre_hooks


def test_gradual_unfreezing_warns_when_too_few_epochs_and_needs_param_groups(tmp_path):
    with pytest.warns(UserWarning, match=r'3 groups need max_epochs >= 3'):
        fit(Tiny(), tmp_path, epochs=1, cbs=[GradualUnfreezing()])

    class Plain(Tiny):
        def configure_optimizers(self): return torch.optim.AdamW(self.parameters())
    with pytest.raises(ValueError, match=r'AdamW\(param_groups\(model, lr\)\)'):
        fit(Plain(), tmp_path, epochs=1, cbs=[GradualUnfreezing()])


# fork: the two processes start at once (spawn imports Lightning twice more, ~30 s on a busy machine)
@pytest.mark.parametrize('strategy', ['ddp_fork', 'ddp_fork_find_unused_parameters_true'])
def test_gradual_unfreezing_two_ddp_processes(strategy, tmp_path):
    "Dropped gradients (plain DDP) or requires_grad (find_unused_parameters): the same schedule on both ranks"
    trainer = pl.Trainer(max_epochs=3, accelerator='cpu', devices=2, strategy=strategy, logger=False,
                         callbacks=[GradualUnfreezing(), Snapshots(tmp_path), GroupMonitor(every=1)],
                         log_every_n_steps=1, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Tiny(wd=0.1), loader(32))  # 4 batches per rank and epoch
    (r0, drop, [df]), (r1, _, _) = (torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in (0, 1))
    assert drop == (strategy == 'ddp_fork')  # plain DDP: gradients dropped; else requires_grad=False
    # the monitor sees frozen groups as such (no gradient) in both modes: 2, 1, 0 per step in epochs 0, 1, 2
    frozen = df.groupby('step').grad_norm.apply(lambda g: g.isna().sum()).tolist()
    assert frozen == [2] * 4 + [1] * 4 + [0] * 4
    check_unfreezing(r0)
    check_unfreezing(r1)
    for (g0, _, _), (g1, _, _) in zip(r0, r1):  # the ranks stay identical
        assert all(same(a, b) for a, b in zip(g0, g1))


class Rates(pl.Callback):
    """Per step and optimizer group: the scheduled rate (batch start), the rate used (at the step, after
    AutoRGN), and each layer group's ||grad|| / ||w|| computed here"""
    def __init__(self): self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, i):
        self.steps.append(dict(sched=[g['lr'] for g in trainer.optimizers[0].param_groups]))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        pgs, rgn = optimizer.param_groups, {}
        for name in NAMES:
            ps = [p for g in pgs if g['name'] == name for p in g['params'] if p.grad is not None]
            sq = lambda ts: sum(t.detach().norm() ** 2 for t in ts) ** .5
            if ps: rgn[name] = sq([p.grad for p in ps]) / sq(ps)
        self.steps[-1].update(used=[g['lr'] for g in pgs], names=[g['name'] for g in pgs],
                              rgn={k: float(v) for k, v in rgn.items()})


@pytest.mark.parametrize('frozen', [False, True])
def test_autorgn_rate_is_scheduled_rate_times_normalised_rgn(frozen, tmp_path):
    """Every step: used rate = scheduled x rgn / max rgn (this test's own norms); the schedule (LinearLR,
    which reads the current rate) the same as without AutoRGN: the factor never compounds; logged per group"""
    rates, rgn, plain, unfreeze = Rates(), AutoRGN(), Rates(), [GradualUnfreezing()] if frozen else []
    trainer = fit(Tiny('linear', steps=12), tmp_path, epochs=3, cbs=unfreeze + [rgn, rates])
    fit(Tiny('linear', steps=12), tmp_path / 'plain', epochs=3, cbs=[GradualUnfreezing()] * frozen + [plain])
    for st, ref in zip(rates.steps, plain.steps, strict=True):
        assert np.allclose(st['sched'], ref['sched'], rtol=1e-9)
        top = max(st['rgn'].values())
        for s, u, n in zip(st['sched'], st['used'], st['names']):
            want = s * st['rgn'][n] / top if n in st['rgn'] else s  # frozen: untouched
            assert math.isclose(u, want, rel_tol=1e-5), (n, u, want)
    assert list(rates.steps[0]['rgn']) == (['head'] if frozen else NAMES)  # frozen: no gradient, skipped
    df, log = rgn.factors, logged(trainer)
    assert len(df) == (4 * 1 + 4 * 2 + 4 * 3 if frozen else 12 * 3)  # a row per step and group trained
    assert df.groupby('step').factor.max().eq(1).all()
    assert log.dropna(subset=['rgn/head'])['rgn/head'].between(0, 1).all()
    assert log['rgn/stem'].notna().sum() == (4 if frozen else 12)
    assert not trainer.optimizers[0]._optimizer_step_post_hooks  # the hook is off after the fit


def test_autorgn_lightning_per_tensor_and_bad_arguments(tmp_path):
    "per='tensor' trains and records one factor per tensor with a gradient; a bad `per` is one line"
    rgn = AutoRGN('tensor', log=False)
    model = Tiny('cosine', steps=4)
    fit(model, tmp_path, epochs=1, cbs=[rgn])
    n = sum(p.requires_grad for p in model.parameters())
    assert len(rgn.factors) == 4 * n and rgn.factors.factor.max() == 1
    with pytest.raises(ValueError, match="per must be one of .*group.*tensor"): AutoRGN('layer')

