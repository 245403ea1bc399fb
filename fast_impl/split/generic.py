"The generic strategy: blocks from the module tree, for any model."
# The blocks: the main run of repeated blocks, the stem before it.
from __future__ import annotations

__all__ = ['generic_blocks']

import itertools, math

from torch import nn

from ..layers import CONTAINERS, classifiers
from .blocks import LATE, Block, Index, owner, under


def _head_names(ix: Index) -> list[str]:
    "Head module names: each classifier, widened to its parent while the parent adds no other weight matrix"
    body, names, heads = ix.model, {m: n for n, m in ix.modules}, []
    for c in classifiers(body):
        name = names.get(c)
        if name is None: continue
        while name:
            parent = owner(name) if '.' in name else ''
            if not parent or _has_matrix(body.get_submodule(parent), c): break
            name = parent
        heads.append(name)
    return heads


def _has_matrix(m: nn.Module, besides: nn.Module) -> bool:
    "True when `m` holds a weight matrix (ndim >= 2) outside `besides`"
    own = {id(p) for p in besides.parameters()}
    return any(p.ndim >= 2 and id(p) not in own for p in m.parameters())


class _Tree:
    "Parameter counts per module (head excluded) and the modules holding parameters, for structure detection"
    def __init__(self, ix: Index, heads: list[str]):
        self.heads, self._kids = heads, {}
        self.mods = dict(ix.modules)
        self.w: dict[str, int] = {}
        # module -> first use of any parameter under it (rule 1: forward order)
        self.first: dict[str, int] = {}
        rank = ix.rank
        for n, p in ix.params:
            parts = n.split('.')
            for i in range(len(parts)):
                m = '.'.join(parts[:i])
                if n in rank: self.first[m] = min(self.first.get(m, rank[n]), rank[n])
                if not self.in_head(n): self.w[m] = self.w.get(m, 0) + p.numel()

    def in_head(self, name: str) -> bool: return any(under(name, h) for h in self.heads)

    def kids(self, node: str) -> list[str]:
        "Parameter-holding children of `node` outside the head; a head's ancestor is replaced by its own kids"
        if node not in self._kids: self._kids[node] = self._find_kids(node)
        return list(self._kids[node])

    def _find_kids(self, node: str) -> list[str]:
        out = []
        for n, _ in self.mods[node].named_children():
            full = f'{node}.{n}' if node else n
            if any(under(h, full) and h != full for h in self.heads): out += self.kids(full)
            elif self.w.get(full) and not self.in_head(full): out.append(full)
        return self.unmixed(self.in_order(out))

    def unmixed(self, names: list[str]) -> list[str]:
        """Two containers of as many items that run in turn (a0 b0 a1 b1 ...: patch embeddings in one list,
        stages in another, zipped in the forward pass) replaced by their items, in forward order (rule 1)"""
        box = [n for n in names if isinstance(self.mods[n], CONTAINERS) and n in self.first]
        for a, b in itertools.combinations(box, 2):
            ka, kb = self.kids(a), self.kids(b)
            if len(ka) != len(kb) or len(ka) < 2 or any(k not in self.first for k in ka + kb): continue
            run = sorted(ka + kb, key=self.first.get)
            if run not in ([x for p in zip(ka, kb) for x in p], [x for p in zip(kb, ka) for x in p]): continue
            swap = {a: ka, b: kb}
            return self.unmixed(self.in_order([k for n in names for k in swap.get(n, [n])]))
        return names

    def in_order(self, names: list[str]) -> list[str]:
        "`names` in forward order (rule 1); one unused by the forward pass stays behind its predecessor"
        key, keyed = -1, []
        for i, n in enumerate(names):
            key = self.first.get(n, key)
            keyed.append((key, i, n))
        return [n for *_, n in sorted(keyed)]

    def cls(self, name: str) -> type: return type(self.mods[name])
    def leaf(self, name: str) -> bool: return not any(True for _ in self.mods[name].children())


def _pools(tree: _Tree, node: str) -> list[int]:
    "Positions (in `tree.kids(node)`: the next kid's index) of parameter-free pooling children of `node`"
    kids, cuts, seen = tree.kids(node), [], 0
    for n, c in tree.mods[node].named_children():
        full = f'{node}.{n}' if node else n
        if full in kids: seen += 1
        elif 'pool' in type(c).__name__.lower() and 0 < seen < len(kids): cuts.append(seen)
    return sorted(set(cuts))


def _aux(name: str) -> bool:
    "An auxiliary classifier (googlenet `aux1`, inception `AuxLogits`): unused in eval mode, not weighed"
    return name.rpartition('.')[2].lower().startswith('aux')


def _core_weight(tree: _Tree, kids: list[str]) -> int: return sum(tree.w[k] for k in kids if not _aux(k))


def _window(tree: _Tree, kids: list[str]) -> tuple[int, int, type] | None:
    "The run of composite kids around the most repeated class (ties: heavier), when it holds half the weight"
    total, best = _core_weight(tree, kids), None
    for c in dict.fromkeys(tree.cls(k) for k in kids if not _aux(k)):
        at = [i for i, k in enumerate(kids) if tree.cls(k) is c]
        lo, hi = at[0], at[-1] + 1
        if len(at) < 2 or any(tree.leaf(k) for k in kids[lo:hi]): continue
        wt = _core_weight(tree, kids[lo:hi])
        # one member is nearly all of it: look inside
        if max(tree.w[kids[i]] for i in at) * 10 > wt * 9: continue
        if wt * 2 >= total and (best is None or (len(at), wt) > best[0]): best = ((len(at), wt), (lo, hi, c))
    return best and best[1]


def _descend(tree: _Tree) -> tuple[str, list[str], list[str]]:
    "Walk down to the node holding the trunk: returns it with the stem and tail siblings met on the way"
    node, stem, tail = '', [], []
    while True:
        kids = tree.kids(node)
        if not kids or _window(tree, kids): return node, stem, tail
        heavy = max(kids, key=lambda k: 0 if _aux(k) else tree.w[k])
        inner, sub = heavy, tree.kids(heavy)
        while len(sub) == 1 and tree.kids(sub[0]):  # a wrapper (nn.TransformerEncoder's `layers`): look in
            inner, sub = sub[0], tree.kids(sub[0])
        if (tree.w[heavy] * 2 < _core_weight(tree, kids) or len(sub) < 2
                or _flat(tree, inner) and not _pools(tree, inner)):
            return node, stem, tail
        i = kids.index(heavy)
        stem, tail, node = stem + kids[:i], kids[i + 1:] + tail, inner


def _flat(tree: _Tree, node: str) -> bool: return all(tree.leaf(k) for k in tree.kids(node))


def _width(tree: _Tree, name: str) -> int:
    "Output width of a block: the first dimension of its last weight matrix"
    mats = [p for p in tree.mods[name].parameters() if p.ndim >= 2]
    return mats[-1].shape[0] if mats else 0


def _cut(items: list, at: list[int]) -> list[list]:
    at = [0] + [i for i in at if 0 < i < len(items)] + [len(items)]
    return [items[a:b] for a, b in zip(at, at[1:]) if b > a]


def _leafish_stages(tree: _Tree, node: str, kids: list[str], lo: int, hi: int, c: type) -> list[list[str]]:
    "Stages of a run of plain blocks: cut at pools, else where the width changes, else one stage per block"
    run = kids[lo:hi]
    cuts = [i - lo for i in _pools(tree, node) if lo < i < hi]
    if cuts: return _cut(run, cuts)
    widths = [_width(tree, k) for k in run]
    cuts = [i for i in range(1, len(run)) if tree.cls(run[i]) is c and widths[i] != widths[i - 1]]
    if cuts: return _cut(run, cuts)
    return _cut(run, [i for i in range(1, len(run)) if tree.cls(run[i]) is c])


def _stages_at(tree: _Tree, node: str) -> tuple[list[str], list[list[str]], list[str]]:
    "Split the kids of trunk `node` into stem kids, stages (lists of kids) and tail kids"
    kids = tree.kids(node)
    win = _window(tree, kids)
    if win:
        lo, hi, c = win
        if issubclass(c, CONTAINERS):
            stages = _cut(kids[lo:hi], [i - lo for i in range(lo + 1, hi) if tree.cls(kids[i]) is c])
        else: stages = _leafish_stages(tree, node, kids, lo, hi, c)
        return kids[:lo], stages, kids[hi:]
    segs = _fallback_segments(tree, node, kids)
    return (segs[0] if len(segs) > 1 else []), segs[1:] if len(segs) > 1 else segs, []


def _fallback_segments(tree: _Tree, node: str, kids: list[str]) -> list[list[str]]:
    "No repeated run: cut a flat node at its pools; elsewhere expand flat kids at their pools"
    # and keep runs of one class together
    if _flat(tree, node) and _pools(tree, node): return _cut(kids, _pools(tree, node))
    segs = []
    for k in kids:
        if not tree.leaf(k) and _flat(tree, k) and _pools(tree, k):
            segs += _cut(tree.kids(k), _pools(tree, k))
        elif segs and tree.cls(segs[-1][-1]) is tree.cls(k): segs[-1].append(k)
        else: segs.append([k])
    return segs


def _stage_blocks(tree: _Tree, stage: list[str]) -> list[list[str]]:
    "Blocks of a stage: a container's parameter-holding kids, other modules whole"
    out = []
    for k in stage:
        sub = tree.kids(k) if isinstance(tree.mods[k], CONTAINERS) else []
        out += [[s] for s in sub] if len(sub) > 1 else [[k]]
    return out


def generic_blocks(ix: Index, headless: bool) -> list[Block]:
    "Blocks from the module tree: the main run of repeated blocks (stages), stem before it, head after"
    # an encoder-decoder (maps shrink, then grow to a dense output): backbone, decoder, head
    from .hf import encoder_decoder_blocks
    dense = encoder_decoder_blocks(ix, headless)
    if dense: return dense
    w = ix.weights
    heads = [] if headless else _head_names(ix)
    tree = _Tree(ix, heads)
    node, stem, tail = _descend(tree)
    kstem, stages, ktail = _stages_at(tree, node)
    stem, tail = stem + kstem, ktail + tail
    stem, more = _stem_stages(tree, stem, ix)
    stages = _join_transitions(tree, more + stages, ix)
    late = _late(tail, heads, ix.sequence)
    tail = [t for t in tail if t not in late]
    mods = [[stem]] if stem else []
    mods += _downsample_forward([_stage_blocks(tree, s) for s in stages], tree, ix)
    if tail: mods[-1] = mods[-1][:-1] + [mods[-1][-1] + tail] if mods else [tail]
    blocks = [Block([], b, 'stem' if stem and i == 0 else 'body', i) for i, st in enumerate(mods) for b in st]
    if heads: blocks.append(Block([], heads + late, 'head', len(mods)))
    return _after_head(_fill(blocks, ix), ix.sequence)


# ---- stages follow resolution (rule 6, where the forward pass saw convolutions)

def _layers(tree: _Tree, name: str) -> int:
    "How many weight matrices or kernels module `name` holds: 1 for a layer (conv + norm), more for a block"
    return sum(p.ndim >= 2 for p in tree.mods[name].parameters())


def _resolution(tree: _Tree, name: str, ix: Index) -> int | None:
    """Output positions per sample (pixels or tokens: a 56x56 map and 3136 tokens are one resolution) of the
    last layer on a feature map that module `name` runs, if any"""
    if ix.trace is None: return None
    convs = [c for c in ix.trace.size if under(c, name)]
    if not convs: return None
    return math.prod(ix.trace.size[max(convs, key=lambda c: ix.rank.get(f'{c}.weight', -1))])


def _by_resolution(tree: _Tree, names: list[str], ix: Index) -> list[list[str]]:
    "`names` cut before each one whose output resolution differs from the one before it"
    runs, last = [], None
    for n in names:
        r = _resolution(tree, n, ix) or last
        if not runs or r != last: runs.append([])
        runs[-1].append(n)
        last = r
    return runs


def _stem_stages(tree: _Tree, stem: list[str], ix: Index) -> tuple[list[str], list[list[str]]]:
    "The stem cut after its leading layers when it holds whole stages"
    # whole stages: heavy, several resolutions, or blocks in a sequence
    if len(stem) == 1 and isinstance(tree.mods[stem[0]], CONTAINERS) and len(tree.kids(stem[0])) > 1:
        stem = tree.kids(stem[0])  # one sequence of blocks (a CNN's `features` before an LSTM): its blocks
    lead = list(itertools.takewhile(lambda k: _layers(tree, k) <= 1, stem))
    rest = stem[len(lead):]
    if not rest and len(lead) > 1: lead, rest = lead[:1], lead[1:]  # plain layers alone: cut at resolutions
    if not lead or not rest: return stem, []
    total = sum(tree.w[k] for k in tree.kids('')) or 1
    sizes = {r for r in (_resolution(tree, k, ix) for k in stem) if r}
    staged = any(isinstance(tree.mods[k], CONTAINERS) and any(_layers(tree, c) > 1 for c in tree.kids(k))
                 for k in rest)
    if sum(tree.w[k] for k in stem) * 10 <= total and len(sizes) <= 2 and not staged: return stem, []
    return lead, _by_resolution(tree, rest, ix)


def _join_transitions(tree: _Tree, stages: list[list[str]], ix: Index) -> list[list[str]]:
    "Plain layers ending a stage that change the resolution start the next stage of blocks"
    # such layers: a downsample, patch merging
    has_blocks = lambda st: any(_layers(tree, k) > 1 for k in st)
    out = [list(st) for st in stages]
    for i in range(len(out) - 1):
        st, prev = out[i], out[i - 1] if i else []
        n = len(list(itertools.takewhile(lambda k: _layers(tree, k) <= 1, reversed(st))))
        before = st[-n - 1] if n < len(st) else prev[-1] if prev and has_blocks(prev) else None
        res = _resolution(tree, st[-1], ix) if n else None
        if (res is None or before is None or not has_blocks(out[i + 1])
                or res == _resolution(tree, before, ix)): continue
        out[i], out[i + 1] = st[:-n], st[-n:] + out[i + 1]
    return [st for st in out if st]


def _downsample_forward(stages: list[list[list[str]]], tree: _Tree, ix: Index) -> list[list[list[str]]]:
    "A plain last block of a stage that changes the resolution (patch merging) joins the next stage's first"
    res = lambda b: _resolution(tree, b[-1], ix)
    for st, nxt in zip(stages, stages[1:]):
        if len(st) < 2 or not nxt or any(_layers(tree, m) > 1 for m in st[-1]): continue
        if res(st[-1]) is not None and res(st[-2]) is not None and res(st[-1]) != res(st[-2]):
            nxt[0] = st.pop() + nxt[0]
    return stages


def _late(mods: list[str], heads: list[str], names: list[str]) -> list[str]:
    "Those of `mods` after the head in `names` (forward order where known): they run after the classifier"
    if not heads: return []
    first = lambda m: next((i for i, n in enumerate(names) if under(n, m)), -1)
    start = min(first(h) for h in heads)
    return [m for m in mods if first(m) > start]


def _after_head(blocks: list[Block], names: list[str]) -> list[Block]:
    "Last body blocks after the classifier in `names` (a final norm) run after it: they join the head"
    # never the whole body
    heads = [b for b in blocks if b.role == 'head']
    if not heads: return blocks
    at = {n: i for i, n in enumerate(names)}
    start = min(at[p] for b in heads for p in _own(b))
    body = [b for b in blocks if b.role != 'head']
    late = list(itertools.takewhile(lambda b: min(at[p] for p in _own(b)) > start, reversed(body)))
    # the classifier defined first says nothing of the order
    if not late or len(late) == len(body): return blocks
    for b in reversed(late): heads[0].params += b.params; heads[0].modules += b.modules
    return [b for b in blocks if all(b is not x for x in late)]


def _own(b: Block) -> list[str]:
    "Parameters of `b` under its modules (not those of an ancestor that `_fill` gave it), else all of them"
    return [p for p in b.params if any(under(p, m) for m in b.modules)] or b.params


def _fill(blocks: list[Block], ix: Index) -> list[Block]:
    "Give each block the parameters under its modules; direct ones of modules above them join one block each"
    w = ix.weights
    if not blocks: blocks = [Block([], [''], 'body', 0)]
    where = {m: b for b in blocks for m in b.modules}
    above = []
    for n in w:
        parts, b = n.split('.'), None
        for i in range(len(parts) - 1, -1, -1):
            b = where.get('.'.join(parts[:i]))
            if b is not None: break
        if b is None: above.append(n)
        else: b.params.append(n)
    blocks = [b for b in blocks if b.params] or blocks[:1]
    rank = ix.rank if any(LATE.search(n.rpartition('.')[2]) for n in above) else {}
    for n in above: _ancestor_block(n, blocks, rank).params.append(n)
    pos = {n: i for i, n in enumerate(w)}
    for b in blocks: b.params.sort(key=pos.get)  # definition order, as the model lists them
    return [b for b in blocks if b.params]


def _ancestor_block(name: str, blocks: list[Block], rank: dict[str, int]) -> Block:
    "Block for a parameter held above the blocks: the last one under its owner used before it, else the first"
    # the first: as for `cls_token`
    own = owner(name)
    inside = [b for b in blocks if any(under(m, own) for m in b.modules)] or blocks
    if name in rank:
        before = [b for b in inside
                  if b.params and min(rank.get(p, len(rank)) for p in b.params) < rank[name]]
        if before: return before[-1]
    elif LATE.search(name.rpartition('.')[2]):
        return inside[-1]  # no forward pass: a scale is used after the children
    return next((b for b in inside if b.role != 'head'), inside[0])
