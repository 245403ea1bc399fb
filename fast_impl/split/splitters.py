"fastai splitters: picklable callables for `Learner(splitter=...)` (so `learn.export()` works); fastai itself not imported."
from __future__ import annotations

__all__ = ['Splitter', 'stage_splitter', 'n_splitter', 'at_splitter', 'splitter']

from dataclasses import dataclass

from torch import nn

from .groups import check_n, split_at, split_n, split_stages


@dataclass
class Splitter:
    "A picklable fastai `splitter` (so `learn.export()` works): `kind` 'stages', 'n' (`arg` groups) or 'at' (`arg` cuts)"
    kind: str = 'stages'
    arg: object = None

    def __post_init__(self):
        if self.kind not in _SPLITS: raise ValueError(f"unknown splitter kind {self.kind!r}; valid: {', '.join(_SPLITS)}")
        if self.kind == 'n': check_n(self.arg)

    def __call__(self, model) -> list[list[nn.Parameter]]: return _SPLITS[self.kind](model, self.arg)

    @property
    def groups(self): return 'stages' if self.kind == 'stages' else self.arg  # `splitter(s.groups) == s`

    def __repr__(self) -> str: return f"{_MAKERS[self.kind]}({'' if self.kind == 'stages' else repr(self.arg)})"


_SPLITS = {'stages': lambda m, _: split_stages(m), 'n': split_n, 'at': split_at}
_MAKERS = {'stages': 'stage_splitter', 'n': 'n_splitter', 'at': 'at_splitter'}


def stage_splitter() -> Splitter:
    "A fastai `splitter`: `split_stages` of the (maybe DDP-wrapped) model"
    return Splitter('stages')


def n_splitter(n: int) -> Splitter:
    "A fastai `splitter`: `split_n(model, n)`"
    return Splitter('n', n)


def at_splitter(paths) -> Splitter:
    "A fastai `splitter`: `split_at(model, paths)`"
    return Splitter('at', paths)


def splitter(groups='stages') -> Splitter:
    "A fastai `splitter` for `groups`: 'stages', a number of groups, or cut points (index paths / dotted names)"
    if groups == 'stages': return stage_splitter()
    if isinstance(groups, int) and not isinstance(groups, bool): return n_splitter(groups)
    if isinstance(groups, (str, list, tuple)): return at_splitter(groups)
    raise ValueError(f"groups must be 'stages', a number of groups, or a list of cut points; got {groups!r}")
