"""Layer groups for any optimizer (no fastai): `param_groups` for torch.optim, Lightning or Hugging Face,
the no-weight-decay policy, and `GroupTracker`, per-group statistics of a plain training loop."""
from __future__ import annotations

__all__ = ['param_groups', 'group_rates', 'no_decay_params', 'is_norm', 'GroupTracker']

import contextlib, fnmatch, math, numbers, re

import torch
from torch import nn

from .checks import check_count, check_decay, check_lr, check_wd
from .lr import layer_decay, lr_spread
from .tree import unwrap

# ---------------------------------------------------------------- the no-weight-decay policy

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
          getattr(nn, 'RMSNorm', nn.LayerNorm))
_NO_WD_NAME = re.compile(
    r'(^|\.)((cls|class|dist|distillation|reg|register|mask|detection)_?tokens?|'
    r'pos_?embed\w*|pos_?embedding\w*|(\w+_)?position_embeddings?(\.weight)?|absolute_pos_embed|'
    r'relative_position_bias_table|attention_biases|'
    r'logit_scale|gamma(_\d)?|lambda_?\d|layer_?scale\w*|(cpb_mlp|continuous_position_bias_mlp)\.\d+\.\w+)$')
# tokens, position embeddings and biases, temperatures, layer scales: as timm, BEiT and Hugging Face name them


def is_norm(m: nn.Module) -> bool:
    "True for a norm layer: torch's (batch, instance, layer, group, RMS) or a `*Norm*` class with parameters"
    # timm's norm-act layers, LayerNorm2d, RmsNorm ...
    if isinstance(m, _NORMS): return True
    if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)): return False
    return 'Norm' in type(m).__name__ and next(m.parameters(recurse=False), None) is not None


def _is_scale(m: nn.Module) -> bool:
    "True for a layer-scale module (timm `LayerScale`, `LayerScale2d`, MetaFormer `Scale`)"
    return re.search(r'Scale(2d)?$', type(m).__name__) is not None


def _timm_no_wd(model: nn.Module) -> set[str]:
    "Full dotted names listed by every `no_weight_decay()` method in `model` (timm)"
    names = set()
    for prefix, m in model.named_modules():
        f = getattr(m, 'no_weight_decay', None)
        if not callable(f): continue
        try: listed = f()
        except Exception: continue
        names |= {f'{prefix}.{n}' if prefix else n for n in listed}
    return names


def no_decay_params(model: nn.Module, with_bias: bool = True) -> list[nn.Parameter]:
    """Parameters of `model` without weight decay: norms, layer scales, tokens, position embeddings, timm's
    `no_weight_decay()` lists; with `with_bias` (weight decay) also every bias and every other 1-d gain or
    offset, as timm, BEiT and MAE exclude them. `with_bias=False` is what trains while a fastai Learner is
    frozen."""
    model = unwrap(model)
    listed = _timm_no_wd(model)
    special = {n for n, m in model.named_modules() if is_norm(m) or _is_scale(m)}
    res = []
    for name, p in model.named_parameters():
        owner, _, leaf = name.rpartition('.')
        if (owner in special or _NO_WD_NAME.search(name) or name in listed
                or any(name.startswith(n + '.') or fnmatch.fnmatchcase(name, n)
                       for n in listed)  # timm: 'pos_embed.*'
                or (with_bias and (leaf == 'bias' or leaf.endswith('_bias') or p.ndim <= 1))): res.append(p)
    return res

# ---------------------------------------------------------------- param_groups


def group_rates(lr: float, n: int, decay: float | None = None) -> list[float]:
    """The rate of each of `n` groups, the head's (last) `lr`: each earlier group `decay` times the next, or,
    with `decay=None`, geometric from `lr/10` to `lr` (fastai's `slice(lr/10, lr)`)"""
    lr, decay = check_lr(lr, 'lr'), check_decay(decay, none_ok=True)
    if decay is None: return lr_spread(lr / 10, lr, n)
    return [float(x) for x in layer_decay(lr, n, decay)]


def param_groups(model: nn.Module, lr: float, groups='stages', decay: float | None = None, wd: float = 0.0,
                 head=None) -> list[dict]:
    """Parameter groups ready for any `torch.optim` optimizer: one per layer group (two where `wd` > 0: the
    parameters with weight decay, then those without), in forward order, stem first.

    Args:
        model: a module, also on the meta device (for inspection), DDP-wrapped or compiled.
        lr: the head's learning rate.
        groups: 'stages' (stem, stages, head), 'blocks' (one group per block, for BEiT-style layer decay),
            a number of groups, cut paths such as ['layer2', 'layer4'], or a splitter function.
        decay: layer decay, each group `decay` times the next; None spreads rates from `lr/10` to `lr`.
        wd: weight decay of the parameters that take it (`no_decay_params` get 0).
        head: module names or index paths that belong to the head group.

    Each dict has `params`, `lr`, `weight_decay`, `name` ('stem', 'stage 2', 'block 7', 'head'), `group`
    (the layer group's index) and `lr_scale` (`lr` / the head's rate, which timm's schedulers read).
    """
    from .split.splitters import named_groups
    lr, decay, wd = check_lr(lr, 'lr'), check_decay(decay, none_ok=True), check_wd(wd)
    model = unwrap(model)
    if next(model.parameters(), None) is None:
        raise ValueError(f"{type(model).__name__} has no parameters to put in optimizer groups")
    named = named_groups(model, groups, head)
    rates = group_rates(lr, len(named), decay)
    no_wd = {id(p) for p in no_decay_params(model)} if wd else set()
    out = []
    for i, ((name, ps), r) in enumerate(zip(named, rates)):
        halves = [[p for p in ps if id(p) not in no_wd], [p for p in ps if id(p) in no_wd]]
        for part, w in zip(halves, (wd, 0.0)):
            if part: out.append(dict(params=part, lr=r, weight_decay=w, name=name, group=i, lr_scale=r / lr))
    return out

# ---------------------------------------------------------------- statistics of a training loop


class GroupTracker:
    """Per step and layer group: the learning rate, the gradient norm and the update-to-weight ratio
    ||delta w|| / ||w|| (w before the step), for a plain PyTorch loop whose optimizer has `param_groups`
    output (groups sharing a `name` are one layer group). Wrap each `optimizer.step()` in
    `with tracker.step():`; `tracker.df` is the table.

    `every`: record one step in `every` (the others cost nothing)."""
    columns = ['step', 'group', 'name', 'lr', 'grad_norm', 'update_ratio']

    def __init__(self, optimizer, every: int = 1):
        self.opt, self.every, self.rows, self.n, self._on = optimizer, check_count(every, 'every'), [], 0, False

    def _groups(self) -> list[tuple[str, list[nn.Parameter], float]]:
        "(name, parameters, lr) per layer group of the optimizer"
        gs = {}
        for i, g in enumerate(self.opt.param_groups):
            key = g.get('name', f'group {g.get("group", i)}')
            gs.setdefault(key, ([], g.get('lr', float('nan'))))[0].extend(g['params'])
        return [(k, ps, lr) for k, (ps, lr) in gs.items()]

    def before(self, groups=None) -> None:
        "Call after `backward()`, before the optimizer step: records gradient norms and the weights"
        self._on = self.n % self.every == 0
        self.n += 1
        if not self._on: return
        self._now = groups if groups is not None else self._groups()
        self._grad, self._prev, self._w = [], [], []
        for _, ps, _ in self._now:
            live = [p for p in ps if p.requires_grad and p.grad is not None]
            self._grad.append(_norm([p.grad for p in live]))
            self._w.append(_norm([p.detach() for p in live]))
            self._prev.append((live, [p.detach().clone() for p in live]))

    def after(self) -> None:
        "Call after the optimizer step: records the update-to-weight ratios"
        if not self._on: return
        step = self.n - 1
        stats = zip(self._now, self._grad, self._w, self._prev)
        for i, ((name, _, lr), g, w, (live, prev)) in enumerate(stats):
            if live:  # ||w_after - w_before|| / ||w_before||
                torch._foreach_sub_(prev, [p.detach() for p in live])
                ratio = _norm(prev) / w if w > 0 else float('nan')
            else: ratio = float('nan')
            self.rows.append((step, i, name, float(lr), g, ratio))
        self._prev = self._now = self._w = None

    @contextlib.contextmanager
    def step(self):
        "`with tracker.step(): optimizer.step()`"
        self.before()
        yield
        self.after()

    @property
    def df(self):
        "The statistics, a row per recorded step and group: `step, group, name, lr, grad_norm, update_ratio`"
        import pandas as pd
        return pd.DataFrame(self.rows, columns=self.columns)

    def plot(self, figsize=(11, 3)):
        "Learning rate, gradient norm and update ratio per group against the step (log scale); the Figure"
        return plot_group_stats(self.df, figsize)


def _norm(ts: list[torch.Tensor]) -> float:
    "The L2 norm of the tensors `ts` together (NaN when there are none)"
    if not ts: return float('nan')
    return float(torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(ts)])))


def plot_group_stats(df, figsize=(11, 3)):
    "A figure of `df` (`GroupTracker.df`, `learn.group_stats.df`): lr, grad norm, update ratio by group (log)"
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, 3, figsize=figsize)
    for (i, name), d in df.groupby(['group', 'name'], sort=True):
        for ax, col in zip(axs, ('lr', 'grad_norm', 'update_ratio')): ax.plot(d['step'], d[col], label=name)
    for ax, t in zip(axs, ('learning rate', 'gradient norm', '||update|| / ||weight||')):
        ax.set(title=t, xlabel='step', yscale='log')
    axs[-1].legend(fontsize='small', loc='best')
    fig.tight_layout()
    return fig
