"The splitting rules, each named once and applied to every strategy's blocks from one forward pass on meta."
from __future__ import annotations

__all__ = ['RULES', 'apply_rules', 'head_modules', 'norms_with_layers', 'in_forward_order']

import bisect

from .blocks import Block, Index, owner, span, under
from ..layers import is_norm
from ..tree import find_module

RULES = """\
Splitting rules (checked on one eval forward pass of a meta copy: nothing allocated, the model untouched):
1. Forward order: stages, and blocks inside a stage, are ordered by their first use in the forward pass;
   registration order is only the fallback where no forward pass can run (split_stages then warns), and any
   parameter still used before one of an earlier group is warned about.
2. Head: every layer that runs after the backbone's last op on a feature map or token sequence (on its
   pooled or final features) is in the head group, however many heads there are and however they are named;
   `head=` names more modules for the head where no rule can see it.
3. Norms: a norm layer that takes a conv or linear layer's output, and is the next layer with parameters to
   run after it, is in that layer's group (mobilenetv4's `conv_head` and `norm_head`).
4. Embeddings: tokens and position embeddings held above the blocks and used before the first body block
   are in the stem group; one first used later (XCiT's, CaiT's class token) stays where it is first used.
5. Final norm: one rule, from rules 2 and 3: a norm that runs on the last feature map (ViT's and Swin's
   `norm`) stays with the last block; a norm on pooled features (ConvNeXt's `head.norm`) is head.
6. Stages follow resolution: a stem that holds whole stages (over 10% of the parameters, several
   resolutions, or blocks in a sequence) keeps only its leading layers, the rest cut where the resolution
   changes (torchvision's Inception v3, HRNet's `layer1`), or, where it holds a whole CNN (hybrid ViTs'
   `patch_embed.backbone`), that CNN's own stages; plain layers ending a stage that only downsample
   (ConvNeXt's, Swin's) start the next stage of blocks. timm's own matcher otherwise keeps its stages.
"""


def head_modules(model, head) -> list[str]:
    "Dotted names of the modules `head` names: one module name or index path, or a list of them"
    if head is None: return []
    paths = [head] if isinstance(head, (int, str)) else list(head)
    if paths and all(isinstance(x, int) and not isinstance(x, bool) for x in paths):
        paths = [paths]  # one index path
    return [find_module(model, p)[0] for p in paths]


def apply_rules(blocks: list[Block], ix: Index, head: list[str] = ()) -> list[Block]:
    "`blocks` after the rules: head (given and found), forward order, embeddings in stem, norms with layers"
    forced = [n for n in ix.weights if any(under(n, h) for h in head)]  # the user's word is last
    if ix.trace is None: return _to_head(blocks, forced, ix)
    blocks = _to_head(blocks, _after_backbone(blocks, ix), ix)
    blocks = _forward_order(_final_norm(blocks, ix), ix.rank)
    blocks = _embeddings_in_stem(blocks, ix)
    return _to_head(in_forward_order(norms_with_layers(blocks, ix), ix), forced, ix)


def _move(names: list[str], to: Block, blocks: list[Block], ix: Index) -> list[Block]:
    "`blocks` with `names` moved into block `to` (kept in forward order); blocks left empty are dropped"
    names = [n for n in names if n not in set(to.params)]
    if not names: return blocks
    gone = set(names)
    for b in blocks:
        if b is to or not gone & set(b.params): continue
        b.params = [p for p in b.params if p not in gone]
        b.modules = [m for m in b.modules if any(under(p, m) for p in b.params)]
    pos = ix.position
    to.params = sorted(to.params + names, key=pos.get)
    first = lambda m: min(pos[p] for p in to.params if under(p, m))
    to.modules = sorted(to.modules + [m for m in span(names) if m not in to.modules], key=first)
    return [b for b in blocks if b.params]


def _to_head(blocks: list[Block], names: list[str], ix: Index) -> list[Block]:
    "Rule 2: `names` into the head block (made when there is none), in the model's own order"
    names = list(dict.fromkeys(names))
    if not names: return blocks
    heads = [b for b in blocks if b.role == 'head']
    if not heads:
        heads = [Block([], [], 'head', max((b.stage for b in blocks), default=-1) + 1)]
        blocks = blocks + heads
    return _move(names, heads[0], blocks, ix)


def _after_backbone(blocks: list[Block], ix: Index) -> list[str]:
    "Rule 2: parameters first used on pooled features, and unused auxiliary classifiers"
    # those on pooled features only when a backbone was seen
    late = set(ix.trace.late)
    body = [p for b in blocks if b.role != 'head' for p in b.params if p in ix.rank]
    aux = [p for p in ix.weights
           if p not in ix.rank and any(x.lower().startswith('aux') for x in p.split('.')[:-1])]
    return aux + ([] if all(p in late for p in body) else [p for p in ix.weights if p in late])


def _final_norm(blocks: list[Block], ix: Index) -> list[Block]:
    "Rule 5: norms leading the head that still run on the feature map join the last body block"
    body, heads = [b for b in blocks if b.role != 'head'], [b for b in blocks if b.role == 'head']
    rank = ix.rank
    if not body or not heads or ix.trace.head_from is None: return blocks
    mods, early = dict(ix.modules), []
    for p in sorted((p for b in heads for p in b.params if p in rank), key=rank.get):
        if rank[p] >= ix.trace.head_from or not is_norm(mods[owner(p)]): break
        early.append(p)
    last = max(body, key=lambda b: min((rank[p] for p in b.params if p in rank), default=-1))
    return _move(early, last, blocks, ix)


def _forward_order(blocks: list[Block], rank: dict[str, int]) -> list[Block]:
    "Rule 1: body stages ordered by first use, and blocks inside each; stages renumbered, the head kept last"
    body, head = [b for b in blocks if b.role != 'head'], [b for b in blocks if b.role == 'head']
    keys, prev = [], -1
    for b in body:
        # an unused block stays behind the last
        prev = min((rank[p] for p in b.params if p in rank), default=prev)
        keys.append(prev)
    runs = []
    for b, k in zip(body, keys):
        if runs and runs[-1][0][0].stage == b.stage: runs[-1][0].append(b); runs[-1][1].append(k)
        else: runs.append(([b], [k]))
    runs.sort(key=lambda r: min(r[1]))
    out = []
    for i, (bs, ks) in enumerate(runs):
        for b, _ in sorted(zip(bs, ks), key=lambda x: x[1]):
            b.stage = i
            out.append(b)
    for b in head: b.stage = len(runs)
    return out + head


def in_forward_order(blocks: list[Block], ix: Index) -> list[Block]:
    "Rule 1, last: each used parameter joins the last block whose first use is at or before its own"
    rank = ix.rank
    starts = [min((rank[p] for p in b.params if p in rank), default=None) for b in blocks]
    anchors = [(r, i) for i, r in enumerate(starts) if r is not None]
    # blocks out of order: nothing to anchor on
    if [r for r, _ in anchors] != sorted(r for r, _ in anchors): return blocks
    keys, moves = [r for r, _ in anchors], {}
    for b in blocks:
        for p in b.params:
            to = blocks[anchors[bisect.bisect_right(keys, rank[p]) - 1][1]] if p in rank else b
            if to is not b: moves.setdefault(id(to), (to, []))[1].append(p)
    # an anchor keeps its first parameter
    for to, names in moves.values(): blocks = _move(names, to, blocks, ix)
    return blocks


def _embeddings_in_stem(blocks: list[Block], ix: Index) -> list[Block]:
    "Rule 4: tokens held above the blocks (by a module with children), used before the first body block: stem"
    body, rank, mods = [b for b in blocks if b.role != 'head'], ix.rank, dict(ix.modules)
    if not body: return blocks
    # a norm with an activation inside (BiT's GroupNormActivation) holds no token
    loose = lambda p: any(True for _ in mods[owner(p)].children()) and not is_norm(mods[owner(p)])
    # held inside a module of its own block (MultiheadAttention's in_proj_weight): part of that layer
    inside = lambda b, p: any(m and owner(p) != m and under(owner(p), m) for m in b.modules)
    rest = [(b, p) for b in body if b.stage != body[0].stage for p in b.params]
    start = min((rank[p] for _, p in rest if p in rank and not loose(p)), default=None)
    if start is None: return blocks
    early = [p for b, p in rest if loose(p) and not inside(b, p) and rank.get(p, start) < start]
    stem = [b for b in body if b.stage == body[0].stage][-1]
    return _move(early, stem, blocks, ix)


def _opens(b: Block, norm: list[str], rank: dict[str, int]) -> bool:
    "True when `norm` opens block `b`, an encoder layer never cut (pre-activation: the norm stays in it)"
    return b.whole and min((rank[p] for p in b.params if p in rank), default=-1) == min(
        (rank[p] for p in norm if p in rank), default=-2)


def norms_with_layers(blocks: list[Block], ix: Index) -> list[Block]:
    "Rule 3: each norm's parameters into the block of the conv or linear layer whose output it normalises"
    if ix.trace is None: return blocks
    rank = ix.rank
    for norm, layer in ix.trace.norm_of.items():
        where = {p: b for b in blocks for p in b.params}
        lps, nps = ix.held_by(layer), [p for p in ix.held_by(norm) if p in where]
        to = where.get(lps[0]) if lps else None
        move = [p for p in nps if where[p] is not to]
        if to is None or not move or _opens(where[move[0]], move, rank): continue
        # a layer shared with an earlier place: moving would break forward order
        after = blocks[blocks.index(to) + 1:]
        if min((rank[q] for b in after for q in b.params if q in rank and q not in move), default=len(rank)) \
                < min(rank.get(p, len(rank)) for p in move): continue
        blocks = _move(move, to, blocks, ix)
    return blocks
