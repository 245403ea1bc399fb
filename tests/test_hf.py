"Issue 20: the Hugging Face Trainer with param_groups, real Trainer.train on a tiny CNN on CPU."
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from fast_impl import param_groups
from fast_impl.hf import GradualUnfreezingCallback, GroupMonitorCallback, monitor_groups
from fast_impl.optim import FlatRatesWarning, layer_groups

NAMES = ['stem', 'stage 1', 'head']
SCALES = [0.25, 0.5, 1.0]  # decay=0.5 over 3 groups


class TinyCNN(nn.Module):
    "A tiny CNN the Trainer can train: forward(x, labels) -> {'loss', 'logits'}"
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(8, 2))

    def forward(self, x, labels=None):  # as Hugging Face models: a loss when given labels
        out = self.net(x)
        return dict(logits=out) if labels is None else dict(loss=F.cross_entropy(out, labels), logits=out)


def data(n: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 2, (n,), generator=g)
    return [dict(x=a, labels=b) for a, b in zip(x, y)]


def trainer(tmp_path, model, opt, sched=None, cbs=(), epochs: int = 2, **kw) -> Trainer:
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=4,
                             logging_steps=1, report_to=[], save_strategy='no', use_cpu=True,
                             disable_tqdm=True, dataloader_num_workers=0, **kw)
    return Trainer(model=model, args=args, train_dataset=data(), optimizers=(opt, sched), callbacks=list(cbs))


def group_lrs(hist) -> np.ndarray:
    return np.array([[h[f'lr/{n}'] for n in NAMES] for h in hist if 'loss' in h])


@pytest.mark.parametrize('kind', ['linear', 'cosine', 'onecycle'])
def test_documented_recipe_keeps_ratios_and_logs_groups_by_name(kind, tmp_path):
    model = TinyCNN()
    opt = torch.optim.AdamW(param_groups(model, 1e-2, decay=0.5, wd=0.1))  # the documented recipe
    sched = None  # the Trainer builds its own (linear, cosine) from the optimizer given
    if kind == 'onecycle':
        lrs = [g['lr'] for g in opt.param_groups]
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lrs, total_steps=8)
    kw = dict(lr_scheduler_type=kind, warmup_steps=2) if sched is None else {}
    t = trainer(tmp_path, model, opt, sched, **kw)
    mon = monitor_groups(t, stats=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error', FlatRatesWarning)
        t.train()
    hist = [h for h in t.state.log_history if 'loss' in h]
    keys = {f'{k}/{n}' for k in ('lr', 'grad_norm', 'update_ratio') for n in NAMES}
    assert len(hist) == 8 and all(keys <= set(h) for h in hist)
    assert sorted(k for k in hist[0] if k.startswith('lr/')) == sorted(f'lr/{n}' for n in NAMES)
    lrs = group_lrs(hist)
    assert np.allclose(lrs[:, 0], [h['learning_rate'] for h in hist])  # the Trainer's own key: the stem's
    live = lrs[:, -1] > 0
    assert np.allclose(lrs[live] / lrs[live, -1:], SCALES) and len(set(lrs[:, -1].round(12))) > 3
    assert np.allclose([h['grad_norm/head'] for h in hist], mon.df[mon.df.name == 'head'].grad_norm)


def test_flattened_rates_warn_once(tmp_path):
    model = TinyCNN()
    opt = torch.optim.AdamW(param_groups(model, 1e-2, decay=0.5))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=8)  # one rate: the mistake
    t = trainer(tmp_path, model, opt, sched, cbs=[GroupMonitorCallback()])
    with pytest.warns(FlatRatesWarning, match=r"max_lr=\[g\['lr'\] for g in opt.param_groups\]") as rec:
        t.train()
    assert sum(issubclass(r.category, FlatRatesWarning) for r in rec) == 1
    hist = [h for h in t.state.log_history if 'loss' in h]
    assert all(h['lr/stem'] == h['lr/head'] for h in hist) and 'grad_norm/stem' not in hist[0]


class Snapshots(TrainerCallback):
    "Each layer group's parameters and the stem's batch-norm statistics at the start and end of every epoch"
    def __init__(self): self.seen = []

    def _take(self, model, optimizer):
        bn = model.net[1]
        groups = [[p.detach().clone() for p in ps] for _, ps, _ in layer_groups(optimizer.param_groups)]
        self.seen.append((groups, bn.running_mean.clone()))

    def on_epoch_begin(self, args, state, control, model=None, optimizer=None, **kw):
        self._take(model, optimizer)

    def on_epoch_end(self, args, state, control, model=None, optimizer=None, **kw):
        self._take(model, optimizer)


def test_gradual_unfreezing_callback(tmp_path):
    model = TinyCNN()
    opt = torch.optim.AdamW(param_groups(model, 1e-2, decay=0.5, wd=0.1))
    snaps = Snapshots()
    trainer(tmp_path, model, opt, cbs=[GradualUnfreezingCallback(), snaps], epochs=3).train()
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))
    for e in range(3):
        (g0, m0), (g1, m1) = snaps.seen[2 * e], snaps.seen[2 * e + 1]
        assert [same(a, b) for a, b in zip(g0, g1)] == [i < 2 - e for i in range(3)], e
        assert torch.equal(m0, m1) == (e < 2)  # the frozen stem's norm statistics too
    assert not any(same(a, b) for a, b in zip(snaps.seen[0][0], snaps.seen[-1][0]))  # all trained
    assert all(p.requires_grad for p in model.parameters())
    with pytest.warns(UserWarning, match='num_train_epochs >= 3'):
        trainer(tmp_path, TinyCNN(), torch.optim.AdamW(param_groups(TinyCNN(), 1e-2)),
                cbs=[GradualUnfreezingCallback()], epochs=1).train()
