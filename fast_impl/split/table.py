"The group table: one row per layer group (first and last module, tensors, parameters, share, learning rate)."
from __future__ import annotations

__all__ = ['GroupTable', 'group_table']

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from ..render import Report, fmt_int, html_table, pretty_table
from .blocks import owner
from .check import group_names, grouped_model


@dataclass
class _Row:
    "One layer group: its position, first and last module, tensor and parameter counts, share of the total"
    group: int
    first: str
    last: str
    tensors: int
    params: int
    pct: float
    trainable: int
    lr: float | None = None
    name: str | None = None
    # an optimizer's view: frozen, its weight decay, tensors without weight decay
    frozen: bool | None = None
    wd: float | None = None
    no_wd: int | None = None


# column: (header, text cell, DataFrame value); optional columns show when any row has their field
_COLS = {
    'group': ('group', lambda r: r.group, lambda r: r.group),
    'name': ('name', lambda r: r.name, lambda r: r.name),
    'first': ('first module', lambda r: r.first, lambda r: r.first),
    'last': ('last module', lambda r: r.last, lambda r: r.last),
    'tensors': ('tensors', lambda r: r.tensors, lambda r: r.tensors),
    'params': ('params', lambda r: fmt_int(r.params), lambda r: r.params),
    'pct': ('%', lambda r: f'{r.pct:.1f}', lambda r: round(r.pct, 2)),
    'lr': ('lr', lambda r: f'{r.lr:.3g}', lambda r: r.lr),
    'frozen': ('frozen', lambda r: 'yes' if r.frozen else 'no', lambda r: r.frozen),
    'trainable': ('trainable', lambda r: fmt_int(r.trainable), lambda r: r.trainable),
    'wd': ('wd', lambda r: f'{r.wd:g}', lambda r: r.wd),
    'no_wd': ('no-wd tensors', lambda r: f'{r.no_wd}/{r.tensors}', lambda r: r.no_wd),
}
_OPTIONAL = ('name', 'lr', 'frozen', 'wd', 'no_wd')


class GroupTable(Report):
    "Layer groups of a model, one row each: `str()` a text table, `to_df()` a DataFrame"
    def __init__(self, rows: list[_Row], title: str = ''):
        self.rows, self.title = rows, title

    @property
    def total(self) -> int: return sum(r.params for r in self.rows)

    def _cols(self, df: bool = False) -> list[str]:
        "The columns shown: the fixed ones, the optional ones some row has (a DataFrame always has trainable)"
        has = {c for c in _OPTIONAL if any(getattr(r, c) is not None for r in self.rows)}
        if df or 'frozen' in has: has.add('trainable')
        return [c for c in _COLS if c in has or c not in _OPTIONAL + ('trainable',)]

    def to_text(self) -> str:
        cols = self._cols()
        rows = [[_COLS[c][1](r) for c in cols] for r in self.rows]
        return (f'{pretty_table([_COLS[c][0] for c in cols], rows)}\n'
                f'Total params: {self.total:,} in {len(self.rows)} groups')

    def _repr_html_(self) -> str:
        cols = self._cols()
        rows = [[str(_COLS[c][1](r)) for c in cols] for r in self.rows]
        return (html_table([_COLS[c][0] for c in cols], rows, self.title)
                + f'<p>Total params: {self.total:,} in {len(self.rows)} groups</p>')

    def to_df(self):
        import pandas as pd
        cols = self._cols(df=True)
        return pd.DataFrame([[_COLS[c][2](r) for c in cols] for r in self.rows], columns=cols)


def group_table(model, groups: list[list[nn.Parameter]], lrs: Sequence[float] | None = None,
                names: Sequence[str] | None = None) -> GroupTable:
    "A table of `model`'s `groups`: per group the first and last module path, tensors, parameters, % of total"
    # and each group's learning rate, when `lrs` is given,
    # and name ('stem', 'stage 2', 'head') when `names` is
    model = grouped_model(model)
    for what, xs in (('lrs', lrs), ('names', names)):
        if xs is not None and len(xs) != len(groups):
            raise ValueError(f"{what} has {len(xs)} {'learning rates' if what == 'lrs' else 'names'} for "
                             f"{len(groups)} groups; give one per group")
    pnames = group_names(model, groups)
    total = sum(p.numel() for g in groups for p in g) or 1
    rows = []
    for i, (g, ns) in enumerate(zip(groups, pnames)):
        n = sum(p.numel() for p in g)
        mods = [owner(x) or '(root)' for x in ns] or ['']
        rows.append(_Row(i, mods[0], mods[-1], len(g), n, 100 * n / total,
                         sum(p.numel() for p in g if p.requires_grad),
                         None if lrs is None else float(lrs[i]), None if names is None else str(names[i])))
    return GroupTable(rows, f'{type(model).__name__}: {len(rows)} layer groups')
