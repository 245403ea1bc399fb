"Records of every split (`Block`, `Plan`), the part of a model to look at, and `Index`, one model's walks."
from __future__ import annotations

__all__ = ['Block', 'Plan', 'Index', 'View', 'view', 'as_model', 'owner', 'under', 'span', 'LATE']

import re
from dataclasses import dataclass, field
from functools import cached_property

from torch import nn

from .. import forward
from ..tree import unwrap

# direct params used after the children
LATE = re.compile(r'(^|_)(gamma|scale|logit_scale|temperature|temp)($|_)')


@dataclass
class Block:
    "Parameters kept together in every split: dotted names, the modules they span, role and stage number"
    params: list[str]
    modules: list[str]
    role: str = 'body'  # 'stem' | 'body' | 'head'
    stage: int = 0
    whole: bool = False  # never cut into sub-modules (a family fix put interleaved modules together)


class Index:
    "A module's named parameters, modules and forward trace, each made once, shared by every step of a split"
    def __init__(self, model: nn.Module, input_size=None, trace=False, input_data=None):
        self.model, self.input_size, self.input_data = model, input_size, input_data
        if trace is not False: self.trace = trace  # a trace made already (of the model that holds this one)

    @cached_property
    def params(self) -> list[tuple[str, nn.Parameter]]: return list(self.model.named_parameters())

    @cached_property
    def modules(self) -> list[tuple[str, nn.Module]]: return list(self.model.named_modules())

    @cached_property
    def weights(self) -> dict[str, int]: return {n: p.numel() for n, p in self.params}

    @cached_property
    def sequence(self) -> list[str]:
        "Parameter names in forward order; each one unused by the forward pass stays behind its predecessor"
        rank, key, keyed = self.rank, -1, []
        for i, n in enumerate(self.weights):
            key = rank.get(n, key)
            keyed.append((key, i, n))
        return [n for _, _, n in sorted(keyed)]

    @cached_property
    def position(self) -> dict[str, int]:
        "Position of each parameter in `sequence` (forward order)"
        return {n: i for i, n in enumerate(self.sequence)}

    @cached_property
    def trace(self):
        "The `Trace` of a forward pass on a meta copy, or None when none can run"
        return forward.trace(self.model, self.input_size, self.input_data)

    @property
    def rank(self) -> dict[str, int]:
        "Rank of each parameter by first use in the forward pass (empty when none could run)"
        return self.trace.rank if self.trace is not None else {}

    def name_of(self, m: nn.Module) -> str | None:
        "The first dotted name of module `m`, if it is in the model"
        return next((n for n, x in self.modules if x is m), None)

    def held_by(self, module: str) -> list[str]:
        "Names of the parameters held directly by `module`"
        return self._held.get(module, [])

    @cached_property
    def _held(self) -> dict[str, list[str]]:
        out = {}
        for n in self.weights: out.setdefault(owner(n), []).append(n)
        return out


@dataclass
class Plan:
    "A model cut into ordered `blocks` by `strategy`: the unit every split is made of"
    model: nn.Module
    blocks: list[Block]
    strategy: str
    # the model's walks, shared by its splits
    index: Index | None = field(default=None, repr=False, compare=False)

    @property
    def head(self) -> list[Block]: return [b for b in self.blocks if b.role == 'head']

    @property
    def body(self) -> list[Block]: return [b for b in self.blocks if b.role != 'head']


# ---------------------------------------------------------------- the model to look at

@dataclass
class View:
    "The part of a (maybe fastai-wrapped) model to analyse: `body`, plus a fastai head"
    # `body`: its names in `model` start with `prefix`
    model: nn.Module
    body: nn.Module
    prefix: str = ''
    head: str | None = None


def as_model(model) -> nn.Module:
    "`model` as a bare module: a name or builder is built on meta, DDP/compile wrappers removed"
    if isinstance(model, nn.Module): return unwrap(model)
    from ..archs import resolve
    return unwrap(resolve(model))


def _fastai_head(m: nn.Module) -> bool:
    "True when `m` looks like fastai's `create_head` (pool, flatten, ..., Linear)"
    kinds = {type(c).__name__ for c in m.children()}
    return isinstance(m, nn.Sequential) and any(isinstance(c, nn.Linear) for c in m.modules()) \
        and bool(kinds & {'AdaptiveConcatPool2d', 'AdaptiveAvgPool2d', 'Flatten'})


def view(model: nn.Module) -> View:
    "Find the body of `vision_learner`'s `Sequential(TimmBody | cut body, head)`, or the model itself"
    if isinstance(model, nn.Sequential) and len(model) == 2:
        body, head = model[0], model[1]
        if type(body).__name__ == 'TimmBody' and isinstance(getattr(body, 'model', None), nn.Module):
            return View(model, unwrap(body.model), '0.model.', '1')
        if isinstance(body, nn.Sequential) and _fastai_head(head): return View(model, body, '0.', '1')
    return View(model, model)


# ---------------------------------------------------------------- names

def owner(name: str) -> str:
    "The dotted name of the module holding parameter (or module) `name`"
    return name.rpartition('.')[0]


def under(name: str, mod: str) -> bool:
    "True when `name` is module `mod` or inside it (everything is under the root, '')"
    return mod == '' or name == mod or name.startswith(mod + '.')


def span(params: list[str]) -> list[str]:
    "The distinct owning modules of `params`, in order"
    return list(dict.fromkeys(owner(p) for p in params))
