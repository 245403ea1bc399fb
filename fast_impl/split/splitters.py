"fastai splitters: picklable callables for `Learner(splitter=...)`, so `learn.export()` works."
# fastai itself is not imported.
from __future__ import annotations

__all__ = ['Splitter', 'stage_splitter', 'block_splitter', 'n_splitter', 'at_splitter', 'splitter',
           'named_groups', 'as_groups']

from dataclasses import dataclass

import torch
from torch import nn

from ..checks import check_count
from .groups import named_at, named_blocks, named_n, named_stages


@dataclass
class Splitter:
    "A picklable fastai `splitter`: `kind` 'stages', 'blocks', 'n' (`arg` groups) or 'at' (`arg` cuts)"
    # picklable, so `learn.export()` works
    kind: str = 'stages'
    arg: object = None
    head: object = None  # module names or index paths that belong to the head group

    def __post_init__(self):
        if self.kind not in _SPLITS:
            raise ValueError(f"unknown splitter kind {self.kind!r}; valid: {', '.join(_SPLITS)}")
        if self.kind == 'n': check_count(self.arg, 'n')

    def __call__(self, model) -> list[list[nn.Parameter]]:
        return [g for _, g in self.named(model)]

    def named(self, model, input_data=None) -> list[tuple[str, list[nn.Parameter]]]:
        "The groups of `model` with their names ('stem', 'stage 2', 'block 7', 'group 3', 'head')"
        return _SPLITS[self.kind](model, self.arg, self.head, input_data)

    # `splitter(s.groups, s.head) == s`
    @property
    def groups(self): return self.kind if self.kind in _NAMED else self.arg

    def __repr__(self) -> str:
        args = (([] if self.kind in _NAMED else [repr(self.arg)])
                + ([] if self.head is None else [f'head={self.head!r}']))
        return f"{_MAKERS[self.kind]}({', '.join(args)})"


_SPLITS = {'stages': lambda m, _, head, data: named_stages(m, head, data),
           'blocks': lambda m, _, head, data: named_blocks(m, head, data),
           'n': named_n, 'at': named_at}
_MAKERS = {'stages': 'stage_splitter', 'blocks': 'block_splitter', 'n': 'n_splitter', 'at': 'at_splitter'}
_NAMED = ('stages', 'blocks')  # the kinds named by a word, taking no argument


def stage_splitter(head=None) -> Splitter:
    "A fastai `splitter`: `split_stages` of the (maybe DDP-wrapped) model, `head` modules in the head group"
    return Splitter('stages', head=head)


def block_splitter(head=None) -> Splitter:
    "A fastai `splitter`: `split_blocks`, one group per block (BEiT-style layer decay)"
    return Splitter('blocks', head=head)


def n_splitter(n: int, head=None) -> Splitter:
    "A fastai `splitter`: `split_n(model, n, head)`"
    return Splitter('n', n, head)


def at_splitter(paths, head=None) -> Splitter:
    "A fastai `splitter`: `split_at(model, paths, head)`"
    return Splitter('at', paths, head)


def splitter(groups='stages', head=None) -> Splitter:
    "A fastai `splitter` for `groups`: 'stages', 'blocks', a number of groups, or cut points"
    # `head`: modules for the head group
    if isinstance(groups, str) and groups in _NAMED: return Splitter(groups, head=head)
    if isinstance(groups, int) and not isinstance(groups, bool): return n_splitter(groups, head)
    if isinstance(groups, (str, list, tuple)): return at_splitter(groups, head)
    raise ValueError(f"groups must be 'stages', 'blocks', a number of groups, or a list of cut points; "
                     f"got {groups!r}")


def as_groups(gs) -> list[list]:
    "A splitter's result as parameter lists: fastai's one flat list is one group; dicts give their 'params'"
    gs = list(gs)
    if gs and isinstance(gs[0], torch.Tensor): return [gs]
    return [list(g['params']) if isinstance(g, dict) else list(g) for g in gs]


_HELP = ("groups takes 'stages', 'blocks', a number of groups, cut paths such as ['layer2', 'layer4'], "
         "or a splitter function")


def named_groups(model, groups='stages', head=None, input_data=None) -> list[tuple[str, list[nn.Parameter]]]:
    """(name, parameters) per layer group of `model` (a module or a `Plan`): `groups` as `splitter` takes it,
    or a splitter function; checked to partition the model, a bad `groups` or `head` one error naming what is
    valid"""
    import difflib
    from ..tree import unwrap
    from .blocks import Plan
    from .check import check_groups
    from .rules import head_modules
    made, model = (model, model.model) if isinstance(model, Plan) else (None, unwrap(model))
    if made is not None and (head is not None or input_data is not None):
        raise ValueError("head= and input_data= go to plan(model, ...) when a Plan is given; this one is "
                         "made already")
    if callable(groups) and not isinstance(groups, Splitter) and head is not None:
        raise ValueError("head= applies to groups='stages', 'blocks', a number or cut paths; "
                         "a splitter function makes its own head")
    head_modules(model, head)  # a bad head= is its own error, listing the valid children
    try:
        if isinstance(groups, Splitter): named = groups.named(made or model, input_data)
        elif callable(groups):
            named = [(f'group {i + 1}', g) for i, g in enumerate(as_groups(groups(model)))]
        else: named = splitter(groups, head).named(made or model, input_data)
        check_groups(model, [g for _, g in named])
    except (ValueError, KeyError, IndexError, TypeError) as e:
        close = difflib.get_close_matches(groups, _NAMED, n=1) if isinstance(groups, str) else []
        why = f"did you mean {close[0]!r}?" if close else (str(e.args[0]) if e.args else type(e).__name__)
        err = type(e) if isinstance(e, (ValueError, TypeError, IndexError)) else ValueError  # KeyError quotes
        shown = (getattr(groups, '__name__', None) if callable(groups) else None) or repr(groups)
        raise err(f"groups={shown} does not split {type(model).__name__}: {why} ({_HELP})") from e
    return named
