"The group table: one row per layer group (first and last module, tensors, parameters, share, learning rate)."
from __future__ import annotations

__all__ = ['GroupTable', 'group_table']

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from ..render import Report, fmt_int, pretty_table
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


class GroupTable(Report):
    "Layer groups of a model, one row each: `str()` a text table, `to_df()` a DataFrame"
    def __init__(self, rows: list[_Row], title: str = ''):
        self.rows, self.title = rows, title

    def to_text(self) -> str:
        lrs = any(r.lr is not None for r in self.rows)
        heads = ['group', 'first module', 'last module', 'tensors', 'params', '%'] + ['lr'] * lrs
        rows = [[r.group, r.first, r.last, r.tensors, fmt_int(r.params), f'{r.pct:.1f}']
                + ([f'{r.lr:.3g}'] if lrs else []) for r in self.rows]
        total = sum(r.params for r in self.rows)
        return f'{pretty_table(heads, rows)}\nTotal params: {total:,} in {len(self.rows)} groups'

    def to_df(self):
        import pandas as pd
        df = pd.DataFrame([(r.group, r.first, r.last, r.tensors, r.params, round(r.pct, 2), r.trainable)
                           for r in self.rows],
                          columns=['group', 'first', 'last', 'tensors', 'params', 'pct', 'trainable'])
        if any(r.lr is not None for r in self.rows): df['lr'] = [r.lr for r in self.rows]
        return df


def group_table(model, groups: list[list[nn.Parameter]], lrs: Sequence[float] | None = None) -> GroupTable:
    "A table of `model`'s `groups`: per group the first and last module path, tensors, parameters, % of total"
    # and each group's learning rate, when `lrs` is given
    model = grouped_model(model)
    if lrs is not None and len(lrs) != len(groups):
        raise ValueError(f"lrs has {len(lrs)} learning rates for {len(groups)} groups; give one per group")
    names = group_names(model, groups)
    total = sum(p.numel() for g in groups for p in g) or 1
    rows = []
    for i, (g, ns) in enumerate(zip(groups, names)):
        n = sum(p.numel() for p in g)
        mods = [owner(x) or '(root)' for x in ns] or ['']
        rows.append(_Row(i, mods[0], mods[-1], len(g), n, 100 * n / total,
                         sum(p.numel() for p in g if p.requires_grad),
                         None if lrs is None else float(lrs[i])))
    return GroupTable(rows, f'{type(model).__name__}: {len(rows)} layer groups')
