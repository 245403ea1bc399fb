"Checks on layer groups: they partition a model's parameters, and they follow its forward order."
from __future__ import annotations

__all__ = ['GroupError', 'check_groups', 'group_names', 'order_violations', 'grouped_model',
           'name_violations', 'norm_splits', 'body_resolutions']

import math
from typing import Sequence

import torch
from torch import nn

from ..tree import unwrap
from .blocks import owner
from ..forward import first_use_order


class GroupError(ValueError):
    "Layer groups not partitioning a model's parameters (missing, duplicated or foreign), or an empty group"


def grouped_model(model) -> nn.Module:
    "The module the groups were split from: a name or builder would build a new model holding none of them"
    if not isinstance(model, nn.Module):
        raise TypeError(f"pass the module the groups were split from, not {model!r}: a name or builder "
                        f"builds a new model, e.g. m = resolve('resnet18'); group_table(m, split_stages(m))")
    return unwrap(model)


def _what(t) -> str:
    "How a group entry that is not a parameter of the model is named in messages"
    return (f'tensor of shape {tuple(t.shape)}' if isinstance(t, torch.Tensor)
            else f'{type(t).__name__} (not a Parameter)')


def group_names(model, groups: list[list[nn.Parameter]]) -> list[list[str]]:
    "The dotted parameter names in each of `groups` (anything else shown as `<what it is>`)"
    model = grouped_model(model)
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names.get(id(p), f'<{_what(p)}>') for p in g] for g in groups]


def check_groups(model, groups) -> None:
    "Raise `GroupError` unless `groups` partition the parameters of `model`"
    # the error names every missing, duplicated or foreign one
    model = grouped_model(model)
    names = {id(p): n for n, p in model.named_parameters()}
    seen, dup, foreign, empty = set(), [], [], []
    for i, g in enumerate(groups):
        g = list(g)
        if not g: empty.append(i)
        for p in g:
            if id(p) not in names: foreign.append(f'group {i}: {_what(p)}')
            elif id(p) in seen: dup.append(names[id(p)])
            seen.add(id(p))
    missing = [n for i, n in names.items() if i not in seen]
    msgs = [f"{what} ({len(xs)}): {', '.join(map(str, xs))}" for what, xs in
            [('empty groups', empty), ('missing parameters', missing), ('duplicated parameters', dup),
             ('tensors that are not parameters of the model', foreign)] if xs]
    if msgs: raise GroupError(f"layer groups do not partition the parameters of {type(model).__name__}: "
                              + '; '.join(msgs))


def order_violations(model, groups: list[list[nn.Parameter]], order: list[str] | None = None,
                     input_size: Sequence[int] | None = None) -> list[str]:
    "Each parameter first used before a parameter of an earlier group, said with that one"
    # empty: the groups follow the forward order
    model = grouped_model(model)
    order = order if order is not None else first_use_order(model, input_size)
    return name_violations(group_names(model, groups), order)


def name_violations(groups: list[list[str]], order: list[str]) -> list[str]:
    "`order_violations` of groups given by parameter names"
    rank = {n: i for i, n in enumerate(order)}
    bad, done, at = [], -1, None
    for i, ns in enumerate(groups):
        used = [rank[n] for n in ns if n in rank]
        if not used: continue
        bad += [f'{order[r]} (group {i}) is used before {order[done]} (group {at})' for r in used if r < done]
        if max(used) > done: done, at = max(used), i
    return bad


def norm_splits(p, groups: list[list[str]]) -> list[str]:
    "Each norm layer that is not in the group of the conv or linear layer whose output it normalises (rule 3)"
    tr, where = p.index.trace, {n: i for i, g in enumerate(groups) for n in g}
    if tr is None: return []
    out = []
    for norm, layer in tr.norm_of.items():
        ns, ls = p.index.held_by(norm), p.index.held_by(layer)
        if ns and ls and any(where.get(n) != where.get(ls[0]) for n in ns):
            out.append(f'{norm} (group {where.get(ns[0])}) normalises {layer} (group {where.get(ls[0])})')
    return out


def body_resolutions(p, groups: list[list[str]]) -> list[list[int]]:
    """Per body group (not stem/head): its input resolution, then each change of its blocks' output
    resolution, as positions per sample (a 56x56 map and 3136 tokens are one resolution)"""
    tr = p.index.trace
    if tr is None or len(groups) < 3: return []
    where = {n: i for i, g in enumerate(groups) for n in g}
    last = lambda b: max((c for c in {owner(n) for n in b.params} if c in tr.size),
                         key=lambda c: tr.rank.get(f'{c}.weight', -1), default=None)
    out, prev = [[] for _ in groups], None
    for b in p.blocks:
        i, c = where.get(b.params[0]), last(b)
        if i is None or c is None: continue
        res, here = out[i] or ([prev] if prev else []), math.prod(tr.size[c])
        if not res or res[-1] != here: res.append(here)
        out[i], prev = res, here
    return out[1:-1] if p.head else out[1:]
