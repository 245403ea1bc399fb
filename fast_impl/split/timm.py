"The timm strategy: blocks from a model's own `group_matcher` (fine groups as blocks, coarse ones as stages)."
from __future__ import annotations

__all__ = ['timm_blocks']

import itertools, re
from typing import Callable

from torch import nn

from ..layers import classifiers
from .blocks import Block, Index, owner, span


def _ordinal(name: str, matcher) -> tuple:
    if callable(matcher):
        o = matcher(name)
        return tuple(o) if isinstance(o, (tuple, list)) else (o,)
    for rx, pre, suf in matcher:
        r = rx.match(name)
        if r: return tuple(float(x) for part in (pre, r.groups(), suf) if part for x in part)
    return (float('inf'),)


def _compile(spec) -> list | Callable:
    if callable(spec): return spec
    out = []
    for i, (_, m) in enumerate(spec.items()):
        if m is None: continue
        for rx, suf in (m if isinstance(m, (tuple, list)) else [(m, None)]):
            out.append((re.compile(rx), (i,), suf))
    return out


def _match(names: list[str], spec) -> list[tuple[list[str], bool]]:
    "timm's `group_with_matcher`: groups of `names` in ordinal order"
    # each with whether it is the unmatched rest
    matcher, by = _compile(spec), {}
    for n in names: by.setdefault(_ordinal(n, matcher), []).append(n)
    groups = []
    for k in sorted(by):
        if groups and k[-1] == 99999: groups[-1][0].extend(by[k])
        else: groups.append((list(by[k]), k[0] == float('inf')))
    return groups


def _sane(groups: list[list[str]], w: dict[str, int], head: set[str]) -> bool:
    "A coarse grouping is sane: 3+ groups, the classifier in the last, neither end holding most of the rest"
    total = sum(w.values()) or 1
    if len(groups) < 3 or not head <= set(groups[-1]): return False
    first, last = sum(w[n] for n in groups[0]), sum(w[n] for n in groups[-1] if n not in head)
    return first <= total / 2 and last <= total / 2


def timm_blocks(ix: Index, headless: bool) -> list[Block] | None:
    "Blocks from timm's `group_matcher`: fine groups as blocks, coarse ones as stages, when those are sane"
    body = ix.model
    gm = getattr(body, 'group_matcher', None)
    if not callable(gm): return None
    try: coarse, fine = gm(coarse=True), gm(coarse=False)
    except Exception: return None
    w = ix.weights
    names = list(w)
    head = {f'{n}.{p}' if n else p for c in classifiers(body) for n in [ix.name_of(c)] if n is not None
            for p, _ in c.named_parameters()} & set(names)
    cg, fg = _match(names, coarse), _match(names, fine)
    if not _sane([g for g, _ in cg], w, head): return None
    stage_of = {n: i for i, (g, _) in enumerate(cg) for n in g}
    if any(len({stage_of[n] for n in g}) > 1 for g, _ in fg): fg = cg
    last = len(cg) - 1
    blocks = [Block(g, span(g), 'head' if stage_of[g[0]] == last and (rest or head & set(g)) else
                    'stem' if stage_of[g[0]] == 0 else 'body', stage_of[g[0]]) for g, rest in fg]
    return _stem_backbone(_by_resolution(_pre_head(blocks, ix, head), ix), ix)


def _by_resolution(blocks: list[Block], ix: Index) -> list[Block]:
    """Rule 6: a ViT-style matcher's stages, one transformer block each (Hiera's `blocks.N`), that run at
    several resolutions: one stage per resolution"""
    from .hf import area, same_resolution
    body = [b for b in blocks if b.role == 'body']
    stages = [b.stage for b in body]
    if len(body) < 2 or len(set(stages)) != len(stages) or not _transformer_run(body, ix): return blocks
    areas = [area(ix, b) for b in body]
    if all(same_resolution(a, c) for a in areas for c in areas): return blocks
    first, last, k = body[0].stage, None, 0
    for b, a in zip(body, areas):
        k += last is not None and not same_resolution(a, last)
        b.stage, last = first + k, a or last
    for b in blocks:
        if b.role == 'head': b.stage = first + k + 1
    return blocks


def _stem_backbone(blocks: list[Block], ix: Index) -> list[Block]:
    "Rule 6 for hybrids: a stem over 10% of the parameters that holds a whole CNN is cut into its stages"
    # the CNN: such as `patch_embed.backbone`
    stem, w = [b for b in blocks if b.stage == 0], ix.weights
    names = [n for b in stem for n in b.params]
    if sum(w[n] for n in names) * 10 <= sum(w.values()): return blocks
    mods = dict(ix.modules)
    cands = [m for m in dict.fromkeys(owner(n) for n in names) if m]
    subs = {a for m in cands for a in _ancestors(m)}
    sub = max(subs, key=lambda a: (sum(w[n] for n in names if n.startswith(a + '.')), -a.count('.')),
              default=None)
    if sub is None or sum(w[n] for n in names if n.startswith(sub + '.')) * 2 < sum(w[n] for n in names):
        return blocks
    sub = _model_like(sub, mods)
    if sub is None: return blocks
    from .generic import generic_blocks
    inner = Index(mods[sub], trace=ix.trace and ix.trace.within(sub + '.'))
    parts = timm_blocks(inner, True) if callable(getattr(mods[sub], 'group_matcher', None)) else None
    parts = [b for b in (parts or generic_blocks(inner, True)) if b.role != 'head']
    if len({b.stage for b in parts}) < 2: return blocks
    order = sorted({b.stage for b in parts})
    new = [Block([f'{sub}.{n}' for n in b.params], [f'{sub}.{m}' if m else sub for m in b.modules],
                 'stem' if b.stage == order[0] else 'body', order.index(b.stage)) for b in parts]
    inside = {n for b in new for n in b.params}
    rest = [n for n in names if n not in inside]
    if rest: new.append(Block(rest, span(rest), 'body', len(order) - 1))
    later = [b for b in blocks if b.stage != 0]
    for b in later: b.stage += len(order) - 1
    return new + later


def _transformer_run(body: list[Block], ix: Index) -> bool:
    "True when the blocks are items of one container, of one class, each holding a Linear (attention, MLP)"
    mods = dict(ix.modules)
    tops = [_common([n.split('.') for n in b.params]) for b in body]
    if not all(tops) or len({owner(t) for t in tops}) != 1 or len({type(mods[t]) for t in tops}) != 1:
        return False
    return all(any(isinstance(c, nn.Linear) for c in mods[t].modules()) for t in tops)


def _common(parts: list[list[str]]) -> str:
    "The dotted name of the module holding all of the parameters split into `parts` ('' for the root)"
    out = []
    for xs in zip(*(p[:-1] for p in parts)):
        if len(set(xs)) > 1: break
        out.append(xs[0])
    return '.'.join(out)


def _ancestors(name: str) -> list[str]:
    parts = name.split('.')
    return ['.'.join(parts[:i]) for i in range(1, len(parts) + 1)]


def _model_like(name: str, mods: dict) -> str | None:
    "`name` or the first module below it with two or more children holding parameters: a network of its own"
    while name in mods:
        kids = [n for n, c in mods[name].named_children() if any(True for _ in c.parameters())]
        if len(kids) >= 2: return name
        if len(kids) != 1: return None
        name = f'{name}.{kids[0]}'
    return None


def _pre_head(blocks: list[Block], ix: Index, head: set[str]) -> list[Block]:
    "Layers with weight matrices leading timm's unmatched rest run before the classifier: a body block"
    # such layers: `conv_head`, `pre_logits`
    mats = {owner(n) for n, p in ix.params if p.ndim >= 2}
    outs = {m.out_features for c in classifiers(ix.model) for m in c.modules() if isinstance(m, nn.Linear)}
    # aux heads
    mats -= {n for n, m in ix.modules if isinstance(m, nn.Linear) and m.out_features in outs}
    out = []
    for b in blocks:
        pre = []
        for n in (b.params if b.role == 'head' else []):
            if n in head or owner(n) not in mats: break
            pre.append(n)
        tops = {n.split('.')[0] for n in pre}
        pre = (list(itertools.takewhile(lambda n: n.split('.')[0] in tops and n not in head, b.params))
               if pre else [])
        if pre and len(pre) < len(b.params):
            out.append(Block(pre, span(pre), 'body', out[-1].stage if out else b.stage))
            b.params = b.params[len(pre):]
            b.modules = span(b.params)
        out.append(b)
    return out
