"fastai splitters: picklable callables for `Learner(splitter=...)`, so `learn.export()` works."
# fastai itself is not imported.
from __future__ import annotations

__all__ = ['Splitter', 'stage_splitter', 'n_splitter', 'at_splitter', 'splitter']

from dataclasses import dataclass

from torch import nn

from .groups import check_n, split_at, split_n, split_stages


@dataclass
class Splitter:
    "A picklable fastai `splitter`: `kind` 'stages', 'n' (`arg` groups) or 'at' (`arg` cuts)"
    # picklable, so `learn.export()` works
    kind: str = 'stages'
    arg: object = None
    head: object = None  # module names or index paths that belong to the head group

    def __post_init__(self):
        if self.kind not in _SPLITS:
            raise ValueError(f"unknown splitter kind {self.kind!r}; valid: {', '.join(_SPLITS)}")
        if self.kind == 'n': check_n(self.arg)

    def __call__(self, model) -> list[list[nn.Parameter]]:
        return _SPLITS[self.kind](model, self.arg, self.head)

    # `splitter(s.groups, s.head) == s`
    @property
    def groups(self): return 'stages' if self.kind == 'stages' else self.arg

    def __repr__(self) -> str:
        args = (([] if self.kind == 'stages' else [repr(self.arg)])
                + ([] if self.head is None else [f'head={self.head!r}']))
        return f"{_MAKERS[self.kind]}({', '.join(args)})"


_SPLITS = {'stages': lambda m, _, head: split_stages(m, head), 'n': split_n, 'at': split_at}
_MAKERS = {'stages': 'stage_splitter', 'n': 'n_splitter', 'at': 'at_splitter'}


def stage_splitter(head=None) -> Splitter:
    "A fastai `splitter`: `split_stages` of the (maybe DDP-wrapped) model, `head` modules in the head group"
    return Splitter('stages', head=head)


def n_splitter(n: int, head=None) -> Splitter:
    "A fastai `splitter`: `split_n(model, n, head)`"
    return Splitter('n', n, head)


def at_splitter(paths, head=None) -> Splitter:
    "A fastai `splitter`: `split_at(model, paths, head)`"
    return Splitter('at', paths, head)


def splitter(groups='stages', head=None) -> Splitter:
    "A fastai `splitter` for `groups`: 'stages', a number of groups, or cut points"
    # `head`: modules for the head group
    if groups == 'stages': return stage_splitter(head)
    if isinstance(groups, int) and not isinstance(groups, bool): return n_splitter(groups, head)
    if isinstance(groups, (str, list, tuple)): return at_splitter(groups, head)
    raise ValueError(f"groups must be 'stages', a number of groups, or a list of cut points; got {groups!r}")
