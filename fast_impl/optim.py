"""Layer groups for any optimizer (no fastai): `param_groups` for torch.optim, Lightning or Hugging Face,
the no-weight-decay policy, and `GroupTracker`, per-group statistics of a plain training loop."""
from __future__ import annotations

__all__ = ['param_groups', 'group_rates', 'no_decay_params', 'GroupTracker', 'plot_group_stats',
           'FlatRatesWarning', 'flattened_rates', 'warn_flattened', 'layer_groups', 'group_colors',
           'GroupFreezer', 'group_logs']

import contextlib, fnmatch, math, numbers, re, warnings

import torch
from torch import nn

from .checks import check_count, check_decay, check_lr, check_wd
from .forward import eval_hooks
from .lr import layer_decay, lr_spread
from .layers import is_norm
from .tree import unwrap

# ---------------------------------------------------------------- the no-weight-decay policy

_NO_WD_NAME = re.compile(
    r'(^|\.)((cls|class|dist|distillation|reg|register|mask|detection)_?tokens?|'
    r'pos_?embed\w*|pos_?embedding\w*|(\w+_)?position_embeddings?(\.weight)?|absolute_pos_embed|'
    r'relative_position_bias_table|attention_biases|'
    r'logit_scale|gamma(_\d)?|lambda_?\d|layer_?scale\w*|(cpb_mlp|continuous_position_bias_mlp)\.\d+\.\w+)$')
# tokens, position embeddings and biases, temperatures, layer scales: as timm, BEiT and Hugging Face name them


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
                 head=None, input_data=None) -> list[dict]:
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
        input_data: example inputs for the forward pass that orders the groups (a tensor, a tuple of
            positional inputs or a dict of keyword inputs), for models not fed one image.

    Each dict has `params`, `lr`, `weight_decay`, `name` ('stem', 'stage 2', 'block 7', 'head'), `group`
    (the layer group's index) and `lr_scale` (`lr` / the head's rate, which timm's schedulers read).
    """
    from .split import Plan, named_groups
    lr, decay, wd = check_lr(lr, 'lr'), check_decay(decay, none_ok=True), check_wd(wd)
    if not isinstance(model, (nn.Module, Plan)):
        raise TypeError(f"param_groups needs the model whose parameters the optimizer will train; got "
                        f"{model!r:.60}: build it first, e.g. "
                        f"model = fast_impl.resolve('resnet18', device='cpu')")
    module = model.model if isinstance(model, Plan) else unwrap(model)
    if next(module.parameters(), None) is None:
        raise ValueError(f"{type(module).__name__} has no parameters to put in optimizer groups")
    named = named_groups(model if isinstance(model, Plan) else module, groups, head, input_data)
    rates = group_rates(lr, len(named), decay)
    no_wd = {id(p) for p in no_decay_params(module)} if wd else set()
    out = []
    for i, ((name, ps), r) in enumerate(zip(named, rates)):
        halves = [[p for p in ps if id(p) not in no_wd], [p for p in ps if id(p) in no_wd]]
        for part, w in zip(halves, (wd, 0.0)):
            if part: out.append(dict(params=part, lr=r, weight_decay=w, name=name, group=i, lr_scale=r / lr))
    return out

# ---------------------------------------------------------------- what a scheduler did to the rates


class FlatRatesWarning(UserWarning):
    "Per-group rates that `param_groups` made different, flattened to one rate by a scheduler"


def flattened_rates(groups) -> str | None:
    """The warning text when the optimizer groups `groups` (dicts) carry different `lr_scale`s, as
    `param_groups` made them, but all train at one positive rate, as a scheduler given one rate leaves them
    (`OneCycleLR(max_lr=1e-3)`, `CyclicLR(base_lr=...)`); else None"""
    made = [g for g in groups if 'lr_scale' in g and 'lr' in g]
    scales, lrs = {float(g['lr_scale']) for g in made}, [float(g['lr']) for g in made]
    if len(scales) < 2 or min(lrs) <= 0 or max(lrs) - min(lrs) > 1e-9 * max(lrs): return None
    n = len({g.get('group', g.get('name')) for g in made})
    return (f"the {n} layer groups that param_groups gave rates from {min(scales):.3g}x to "
            f"{max(scales):.3g}x the head's all train at lr={lrs[0]:.3g}: a scheduler given one rate "
            f"flattened them. Give it one rate per group, e.g. "
            f"OneCycleLR(opt, max_lr=[g['lr'] for g in opt.param_groups], ...) (CyclicLR: base_lr and "
            f"max_lr lists; fastai: lr_max=slice(lo, hi) or a list); LambdaLR, cosine, linear and timm "
            f"schedules keep the ratios")


def warn_flattened(groups, warned: bool = False) -> bool:
    """Warn (`FlatRatesWarning`) when `flattened_rates(groups)` finds flattened rates, unless `warned`;
    returns whether a warning was given now or before:
    `self.warned = warn_flattened(groups, self.warned)`"""
    if warned: return True
    msg = flattened_rates(groups)
    if msg: warnings.warn(msg, FlatRatesWarning, stacklevel=3)
    return msg is not None


def layer_groups(groups) -> list[tuple[str, list[nn.Parameter], float]]:
    """(name, parameters, lr) per layer group of the optimizer groups `groups` (dicts), in order: groups
    sharing a `name` (the weight-decay halves `param_groups` makes) are one layer group"""
    out = {}
    for i, g in enumerate(groups):
        key = g.get('name', f'group {g.get("group", i)}')
        out.setdefault(key, ([], g.get('lr', float('nan'))))[0].extend(g['params'])
    return [(k, ps, lr) for k, (ps, lr) in out.items()]

# ---------------------------------------------------------------- statistics of a training loop


class GroupTracker:
    """Per step and layer group: the learning rate, the gradient norm and the update-to-weight ratio
    ||delta w|| / ||w|| (w before the step), for a plain PyTorch loop whose optimizer has `param_groups`
    output (groups sharing a `name` are one layer group). Wrap each `optimizer.step()` in
    `with tracker.step():`; `tracker.df` is the table.

    `every`: record one step in `every` (the others cost nothing). Rates that `param_groups` made different
    and a scheduler then made equal give one `FlatRatesWarning`."""
    columns = ['step', 'group', 'name', 'lr', 'grad_norm', 'update_ratio']

    def __init__(self, optimizer, every: int = 1):
        self.opt, self.every, self.rows, self.n = optimizer, check_count(every, 'every'), [], 0
        self._on = self.warned = False

    def _groups(self) -> list[tuple[str, list[nn.Parameter], float]]:
        "(name, parameters, lr) per layer group of the optimizer"
        return layer_groups(self.opt.param_groups)

    def before(self, groups=None, hypers=None) -> None:
        """Call after `backward()`, before the optimizer step: records gradient norms and the weights.
        `groups`: (name, parameters, lr) per layer group, else read from the optimizer; `hypers`: the
        optimizer's group dicts, for the flattened-rate check (default: the optimizer's `param_groups`)"""
        self._on = self.n % self.every == 0
        self.n += 1
        if not self._on: return
        if hypers is None and self.opt is not None: hypers = self.opt.param_groups
        if hypers is not None: self.warned = warn_flattened(hypers, self.warned)
        self._now = groups if groups is not None else self._groups()
        self._grad, self._prev, self._w = [], [], []
        for _, ps, _ in self._now:
            live = [p for p in ps if p.requires_grad and p.grad is not None]
            self._grad.append(_norm([p.grad for p in live]))
            self._w.append(_norm([p.detach() for p in live]))
            self._prev.append((live, [p.detach().clone() for p in live]))

    def after(self) -> list[tuple]:
        "Call after the optimizer step: records the update-to-weight ratios; returns the rows recorded now"
        if not self._on: return []
        step, first = self.n - 1, len(self.rows)
        stats = zip(self._now, self._grad, self._w, self._prev)
        for i, ((name, _, lr), g, w, (live, prev)) in enumerate(stats):
            if live:  # ||w_after - w_before|| / ||w_before||
                torch._foreach_sub_(prev, [p.detach() for p in live])
                ratio = _norm(prev) / w if w > 0 else float('nan')
            else: ratio = float('nan')
            self.rows.append((step, i, name, float(lr), g, ratio))
        self._prev = self._now = self._w = None
        self._on = False
        return self.rows[first:]

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


def group_logs(rows) -> dict[str, float]:
    "`GroupTracker` rows as log keys by group name: `lr/head`, `grad_norm/head`, `update_ratio/head` (no NaN)"
    out = {}
    for _, _, name, *vals in rows:
        for key, v in zip(('lr', 'grad_norm', 'update_ratio'), vals):
            if not math.isnan(v): out[f'{key}/{name}'] = v
    return out


def _norm(ts: list[torch.Tensor]) -> float:
    "The L2 norm of the tensors `ts` together (NaN when there are none)"
    if not ts: return float('nan')
    return float(torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(ts)])))


def group_colors(n: int, cmap: str = 'viridis') -> list[tuple]:
    "`n` RGBA colours on the sequential `cmap`, stem (dark) to head (light), distinct and ordered by depth"
    import matplotlib
    import numpy as np
    return [tuple(c) for c in matplotlib.colormaps[cmap](np.linspace(0, 0.9, n) if n > 1 else [0.])]


def _group_key(fig, axs, names: list[str], colors: list[tuple], cmap: str, legend_max: int = 10) -> None:
    "A legend outside the axes for up to `legend_max` groups, else a colorbar labelled with some group names"
    import matplotlib
    from matplotlib.colors import ListedColormap, BoundaryNorm
    n = len(names)
    if n <= legend_max:
        fig.legend(axs[0].lines, names, loc='outside right center', fontsize='small', title='group')
        return
    sm = matplotlib.cm.ScalarMappable(norm=BoundaryNorm(range(n + 1), n), cmap=ListedColormap(colors))
    cb = fig.colorbar(sm, ax=list(axs), location='right', aspect=30, label='group (stem → head)')
    ticks = sorted({round(i) for i in (k * (n - 1) / 5 for k in range(6))})
    cb.set_ticks([t + 0.5 for t in ticks], labels=[names[t] for t in ticks])


def plot_group_stats(df, figsize=(11, 3), cmap: str = 'viridis'):
    """A figure of `df` (`GroupTracker.df`, `learn.group_stats.df`): lr, grad norm and update ratio per
    group against the step (log scale), groups coloured by depth on `cmap` (a legend, or for many groups
    a colorbar, outside the axes)"""
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, 3, figsize=figsize, layout='constrained')
    groups = list(df.groupby(['group', 'name'], sort=True))
    colors = group_colors(len(groups), cmap)
    for ((i, name), d), c in zip(groups, colors):
        for ax, col in zip(axs, ('lr', 'grad_norm', 'update_ratio')):
            ax.plot(d['step'], d[col], label=name, color=c, lw=1.2)
    for ax, t in zip(axs, ('learning rate', 'gradient norm', '||update|| / ||weight||')):
        ax.set(title=t, xlabel='step', yscale='log')
    _group_key(fig, axs, [name for (_, name), _ in groups], colors, cmap)
    return fig

# ---------------------------------------------------------------- gradual unfreezing for any loop


class GroupFreezer:
    """ULMFiT's gradual unfreezing over the layer groups of `optimizer` (as `param_groups` made them), for any
    loop or trainer: `set(epoch)` trains the head group first, then `step` more groups every
    `epochs_per_phase` epochs, until every group trains; `restore()` undoes it. A frozen parameter gets no
    gradient (`requires_grad=False`), so torch optimizers leave it bit-for-bit unchanged (weight decay too);
    a batch norm wholly inside frozen groups runs in eval mode, on its running statistics: the frozen group
    computes the same function in training and evaluation, and its statistics stay as they were (a pretrained
    body's). `drop_grads=True` keeps `requires_grad` and needs `drop()` after each backward instead (DDP
    without `find_unused_parameters`, see `fast_impl.lightning.GradualUnfreezing`)."""

    def __init__(self, optimizer, epochs_per_phase: int = 1, step: int = 1, model=None, drop_grads=False):
        if not any('group' in g for g in optimizer.param_groups):
            raise ValueError("gradual unfreezing reads the layer groups that param_groups made; build the "
                             "optimizer as torch.optim.AdamW(param_groups(model, lr))")
        named = layer_groups(optimizer.param_groups)
        if len(named) < 2:
            raise ValueError(f"gradual unfreezing needs 2 or more layer groups; the optimizer has "
                             f"{len(named)}: param_groups(model, lr, groups='stages', 'blocks' or a number)")
        self.names, self.groups = [n for n, _, _ in named], [ps for _, ps, _ in named]
        self.every, self.step = check_count(epochs_per_phase, 'epochs_per_phase'), check_count(step, 'step')
        self.drop_grads, self.n_frozen, self._hooks = drop_grads, 0, {}
        self._grad = {id(p): p.requires_grad for ps in self.groups for p in ps}
        self._norms = _norms_by_params(model, self.groups) if model is not None else []

    @property
    def epochs_needed(self) -> int:
        "Epochs until every group trains: one phase per `step` groups after the head's"
        return (math.ceil((len(self.groups) - 1) / self.step) + 1) * self.every

    def frozen_at(self, epoch: int) -> int:
        "How many groups, from the stem, are frozen in `epoch` (0-based)"
        return max(0, len(self.groups) - 1 - (epoch // self.every) * self.step)

    def set(self, epoch: int) -> int:
        "Freeze the groups due to be frozen in `epoch`, unfreeze the rest; returns how many are frozen"
        self.n_frozen = k = self.frozen_at(epoch)
        for i, ps in enumerate(self.groups):
            for p in ps: p.requires_grad_(self._grad[id(p)] and (i >= k or self.drop_grads))
        for m, i in self._norms: self._eval_norm(m, i < k)
        return k

    def _eval_norm(self, m: nn.Module, frozen: bool) -> None:
        "Run `m`'s forward in eval mode while `frozen` (hooks: trainers call `model.train()` at will)"
        if frozen and m not in self._hooks:
            self._hooks[m] = eval_hooks(m)
        elif not frozen and m in self._hooks:
            for h in self._hooks.pop(m): h.remove()

    def drop(self) -> None:
        "With `drop_grads`: forget the frozen groups' gradients (call after backward, before the step)"
        for ps in self.groups[:self.n_frozen]:
            for p in ps: p.grad = None

    def restore(self) -> None:
        "Every group trains again: `requires_grad` as it was, norms without their hooks"
        self.n_frozen = 0
        for ps in self.groups:
            for p in ps: p.requires_grad_(self._grad[id(p)])
        for m in list(self._hooks):
            for h in self._hooks.pop(m): h.remove()


def _norms_by_params(model: nn.Module, groups) -> list[tuple[nn.Module, int]]:
    "(batch norm, its group) per batch norm of `model` with its parameters in one group"
    where = {id(p): i for i, ps in enumerate(groups) for p in ps}
    out = []
    for m in unwrap(model).modules():
        own = {where.get(id(p)) for p in m.parameters(recurse=False)}
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and len(own) == 1 and None not in own:
            out.append((m, own.pop()))
    return out
