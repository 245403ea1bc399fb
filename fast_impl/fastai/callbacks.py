"""Per-group reports of a fastai Learner: `learn.show_groups()`, `learn.plot_groups()`, and the `GroupStats`
callback (learning rate, gradient norm, update ratio per group and step) with `learn.plot_group_stats()`."""
from __future__ import annotations

__all__ = ['GroupStats', 'show_groups', 'plot_groups', 'plot_group_stats']

from fastcore.basics import patch
from fastai.callback.core import Callback
from fastai.learner import Learner

from .. import optim
from ..split import group_table
from ..split.table import GroupTable
from ..tree import unwrap
from .learner import group_labels
from .rgn import AutoRGN


@patch
def show_groups(self: Learner) -> GroupTable:
    "The layer groups as the optimizer sees them: names, module range, params, share, LR, frozen, wd"
    if self.opt is None: self.create_opt()
    opt = self.opt
    groups = [list(ps) for ps in opt.param_lists]
    t = group_table(unwrap(self.model), groups, lrs=[float(h.get('lr', float('nan'))) for h in opt.hypers],
                    names=group_labels(self))
    frozen = getattr(opt, 'frozen_idx', 0)
    for r, ps, h in zip(t.rows, groups, opt.hypers):
        r.frozen, r.wd = r.group < frozen, float(h.get('wd', 0.))
        r.no_wd = sum(not opt.state[p].get('do_wd', True) for p in ps)
    t.title = 'Layer groups'
    return t


@patch
def plot_groups(self: Learner, figsize=(8, 3)):
    "A bar chart of parameters and learning rate per layer group; returns the matplotlib figure"
    import matplotlib.pyplot as plt
    rows = self.show_groups().rows
    fig, (a, b) = plt.subplots(1, 2, figsize=figsize)
    x = [r.group for r in rows]
    a.bar(x, [r.params for r in rows], color=['tab:gray' if r.frozen else 'tab:blue' for r in rows])
    a.set(title='parameters (grey: frozen)', xlabel='group', yscale='log')
    b.bar(x, [r.lr for r in rows], color='tab:orange')
    b.set(title='learning rate', xlabel='group', yscale='log')
    fig.tight_layout()
    return fig


class GroupStats(Callback):
    """Records, every training step (or one in `every`) and layer group: the learning rate, the gradient norm
    and the update-to-weight ratio ||delta w|| / ||w||. Given to the Learner (`cbs=GroupStats()`) it records
    every fit, as `learn.group_stats`; given to one fit (`gs = GroupStats(); learn.fit(1, cbs=gs)`) it keeps
    what it recorded after. `.df` is the table (it runs on across fits, `reset()` clears it), `.plot()` and
    `learn.plot_group_stats()` the figure. Frozen groups show NaN. With `AutoRGN` in the fit, an `rgn` column
    holds each step's Auto-RGN factor (the rate used is the scheduled one times it; per tensor: the group's
    largest)."""
    order = 60  # after the schedulers (the rates of this step)

    def __init__(self, every: int = 1):
        self.tracker, self._rgn = optim.GroupTracker(None, every), []

    def reset(self): self.tracker.rows, self.tracker.n, self._rgn = [], 0, []

    def before_fit(self):
        self._names = group_labels(self.learn)
        self.learn.last_group_stats = self  # kept when the callback goes with the end of a `fit(cbs=...)`

    def before_step(self):
        if not self.training: return
        opt = self.learn.opt
        named = zip(self._names, opt.param_lists, opt.hypers)
        self.tracker.before([(name, ps, h.get('lr', float('nan'))) for name, ps, h in named],
                            hypers=opt.hypers)

    def after_step(self):
        if not self.training: return
        n = len(self.tracker.rows)
        self.tracker.after()
        if len(self.tracker.rows) == n: return
        rgn = next((cb for cb in self.learn.cbs if isinstance(cb, AutoRGN)), None)
        last = rgn.last if rgn is not None and len(rgn.last) == len(self.tracker.rows) - n else []
        self._rgn += last or [float('nan')] * (len(self.tracker.rows) - n)

    @property
    def df(self):
        "`step, group, name, lr, grad_norm, update_ratio` (and `rgn` under AutoRGN): a row per step and group"
        df = self.tracker.df
        if any(x == x for x in self._rgn): df['rgn'] = self._rgn
        return df

    def plot(self, figsize=(11, 3)):
        "Learning rate, gradient norm and update ratio per layer group against the step (log scale)"
        if not self.tracker.rows: raise ValueError("no group statistics yet: fit first")
        return optim.plot_group_stats(self.df, figsize)


@patch
def plot_group_stats(self: Learner, figsize=(11, 3)):
    """Learning rate, gradient norm and update ratio per layer group against the step (log scale), from the
    Learner's `GroupStats` or the last one given to a fit; the Figure"""
    cb = getattr(self, 'group_stats', None)
    if not isinstance(cb, GroupStats): cb = getattr(self, 'last_group_stats', None)
    if not isinstance(cb, GroupStats):
        raise ValueError("this Learner records no group statistics: pass cbs=GroupStats() to the Learner "
                         "(or learn.add_cb(GroupStats())) or to a fit, and fit")
    return cb.plot(figsize)
