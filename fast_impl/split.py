"Cut any model into layer groups (stem, stages, head) for discriminative learning rates, checked to partition its parameters."
from __future__ import annotations

__all__ = ['split_stages', 'split_n', 'split_at', 'check_groups', 'group_table', 'stage_splitter', 'n_splitter',
           'at_splitter', 'splitter', 'Splitter', 'GroupError', 'GroupTable', 'GroupRow', 'Block', 'Plan', 'plan',
           'STRATEGIES', 'register_strategy', 'FIXES', 'stage_blocks', 'group_names', 'balance', 'first_use_order',
           'order_violations', 'guess_input_size']

import bisect, contextlib, itertools, re, warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .render import Report, fmt_int, pretty_table
from .tree import copy_to, eval_mode, find_module, unwrap

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_LATE = re.compile(r'(^|_)(gamma|scale|logit_scale|temperature|temp)($|_)')  # direct params used after the children


class GroupError(ValueError):
    "Layer groups that do not partition a model's parameters (missing, duplicated or foreign), or an empty group"


# ---------------------------------------------------------------- records

@dataclass
class Block:
    "Parameters that stay together in every split: their dotted names, the modules they span, role and stage number"
    params: list[str]
    modules: list[str]
    role: str = 'body'  # 'stem' | 'body' | 'head'
    stage: int = 0
    whole: bool = False  # never cut into sub-modules (a family fix put interleaved modules together)


@dataclass
class Plan:
    "A model cut into ordered `blocks` by `strategy`: the unit every split is made of"
    model: nn.Module
    blocks: list[Block]
    strategy: str

    @property
    def head(self) -> list[Block]: return [b for b in self.blocks if b.role == 'head']

    @property
    def body(self) -> list[Block]: return [b for b in self.blocks if b.role != 'head']


# ---------------------------------------------------------------- the model to look at

@dataclass
class _View:
    "The part of a (maybe fastai-wrapped) model to analyse: `body` whose names start with `prefix`, plus a fastai head"
    model: nn.Module
    body: nn.Module
    prefix: str = ''
    head: str | None = None


def _as_model(model) -> nn.Module:
    if isinstance(model, nn.Module): return unwrap(model)
    from .resolve import resolve
    return unwrap(resolve(model))


def _grouped_model(model) -> nn.Module:
    "The module that groups were split from: a name or builder would build a new model that holds none of them"
    if not isinstance(model, nn.Module):
        raise TypeError(f"pass the module the groups were split from, not {model!r}: a name or builder builds a new "
                        f"model, e.g. m = resolve('resnet18'); group_table(m, split_stages(m))")
    return unwrap(model)


def _what(t) -> str:
    "How a group entry that is not a parameter of the model is named in messages"
    return f'tensor of shape {tuple(t.shape)}' if isinstance(t, torch.Tensor) else f'{type(t).__name__} (not a Parameter)'


def _fastai_head(m: nn.Module) -> bool:
    "True when `m` looks like fastai's `create_head` (pool, flatten, ..., Linear)"
    kinds = {type(c).__name__ for c in m.children()}
    return isinstance(m, nn.Sequential) and any(isinstance(c, nn.Linear) for c in m.modules()) \
        and bool(kinds & {'AdaptiveConcatPool2d', 'AdaptiveAvgPool2d', 'Flatten'})


def _view(model: nn.Module) -> _View:
    "Find the body of `vision_learner`'s `Sequential(TimmBody | cut body, head)`, or the model itself"
    if isinstance(model, nn.Sequential) and len(model) == 2:
        body, head = model[0], model[1]
        if type(body).__name__ == 'TimmBody' and isinstance(getattr(body, 'model', None), nn.Module):
            return _View(model, unwrap(body.model), '0.model.', '1')
        if isinstance(body, nn.Sequential) and _fastai_head(head): return _View(model, body, '0.', '1')
    return _View(model, model)


# ---------------------------------------------------------------- strategies

STRATEGIES: dict[str, Callable] = {}  # name -> f(body, headless) -> list[Block] | None, tried in order


def register_strategy(name: str):
    "Decorator: register `f(body, headless) -> list[Block] | None` as a split strategy (None: does not apply)"
    def _inner(f):
        STRATEGIES[name] = f
        return f
    return _inner


def _owner(name: str) -> str: return name.rpartition('.')[0]


_MEMO: dict = {}  # named parameters and modules of the models one split looks at (cleared when it returns)


@contextlib.contextmanager
def _scope():
    "Memoise `_params` and `_modules` until the outermost split call returns"
    depth = _MEMO.get('depth', 0)
    _MEMO['depth'] = depth + 1
    try: yield
    finally:
        if depth: _MEMO['depth'] = depth
        else: _MEMO.clear()


def _memo(key, f):
    if not _MEMO: return f()
    if key not in _MEMO: _MEMO[key] = f()
    return _MEMO[key]


def _params(m: nn.Module) -> list[tuple[str, nn.Parameter]]: return _memo(('p', id(m)), lambda: list(m.named_parameters()))
def _modules(m: nn.Module) -> list[tuple[str, nn.Module]]: return _memo(('m', id(m)), lambda: list(m.named_modules()))


def _weights(model: nn.Module) -> dict[str, int]:
    return {n: p.numel() for n, p in _params(model)}


def _classifier(body: nn.Module) -> list[nn.Module]:
    "The classifier modules: timm's `get_classifier()`, else the last Linear, else a top-level `classifier`/`fc`/`head`"
    get = getattr(body, 'get_classifier', None)
    if callable(get):
        try: c = get()
        except Exception: c = None
        cs = [m for m in (c if isinstance(c, (tuple, list)) else [c]) if isinstance(m, nn.Module)]
        if cs or c is not None: return [m for m in cs if any(True for _ in m.parameters())]
    lins = [m for m in body.modules() if isinstance(m, nn.Linear)]
    if lins: return lins[-1:]
    kids = dict(body.named_children())
    return [kids[n] for n in ('classifier', 'fc', 'head', 'heads', 'last_linear') if n in kids
            and any(True for _ in kids[n].parameters())][:1]


def _head_names(body: nn.Module, names: dict[nn.Module, str]) -> list[str]:
    "Module names of the head: each classifier, widened to its parent while the parent adds no other weight matrix"
    heads = []
    for c in _classifier(body):
        name = names.get(c)
        if name is None: continue
        while name:
            parent = _owner(name) if '.' in name else ''
            if not parent or _has_matrix(body.get_submodule(parent), c): break
            name = parent
        heads.append(name)
    return heads


def _has_matrix(m: nn.Module, besides: nn.Module) -> bool:
    "True when `m` holds a weight matrix (ndim >= 2) outside `besides`"
    own = {id(p) for p in besides.parameters()}
    return any(p.ndim >= 2 and id(p) not in own for p in m.parameters())


# ---- timm's own group matcher

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
        for rx, suf in (m if isinstance(m, (tuple, list)) else [(m, None)]): out.append((re.compile(rx), (i,), suf))
    return out


def _match(names: list[str], spec) -> list[tuple[list[str], bool]]:
    "timm's `group_with_matcher`: groups of `names` in ordinal order, each with whether it is the unmatched rest"
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


# Families where the matcher (or the module order) puts a parameter in a group before or after the one that first uses
# it: (parameters to move, the first parameter of the block they move to, as a regex template that may use the
# match's groups or a function of the model; a leading '>' takes the last parameter it matches)
FIXES: list[tuple[str, str | Callable]] = [
    (r'^cls_token$', r'^cls_attn_blocks\.0\.'),        # xcit: class attention after the blocks
    (r'^cls_token$', lambda m: r'^norm\.' if hasattr(m, 'blocks_token_only') else '^$'),  # cait
    (r'^blocks_token_only\.', r'^norm\.'),              # cait's matcher overlaps them with the last blocks
    (r'^cls_token$', r'^post_network\.0\.'),           # volo
    (r'^pos_embed$', r'^network\.2\.'),                # volo adds it after the first stage
    (r'^cls_token$', lambda m: rf'^blocks\.{getattr(m, "local_up_to_layer", -1)}\.'),  # convit
    (r'^c?rpe(\d)\.', r'^serial_blocks\1\.0\.'),        # coat: shared position encodings of each serial stage
    (r'^cpe(\d)\.', r'^serial_blocks\1\.0\.'),
    (r'^rope\.', r'^patch_embed\.'),                   # vit with rope: computed before the tokens are built
    (r'^(incre|downsamp)_modules\.', r'^incre_modules\.0\.'),  # hrnet: incre and downsamp modules interleave
    (r'^norm\.(\d+)\.', r'>^stages\.\1\.'),              # efficientvim: a norm after each stage
    (r'^shared_rel_pos\.', r'^patch_embed\.'),         # vit_srelpos: computed once, used by every block
]
_ANY_FIX = re.compile('|'.join(f'(?:{src})' for src, _ in FIXES))


@register_strategy('timm')
def _timm_blocks(body: nn.Module, headless: bool) -> list[Block] | None:
    "Blocks from timm's `group_matcher`: fine groups as blocks, coarse groups as stages, when the coarse ones are sane"
    gm = getattr(body, 'group_matcher', None)
    if not callable(gm): return None
    try: coarse, fine = gm(coarse=True), gm(coarse=False)
    except Exception: return None
    w = _weights(body)
    names = list(w)
    head = {f'{n}.{p}' if n else p for c in _classifier(body) for n in [_module_name(body, c)] if n is not None
            for p, _ in c.named_parameters()} & set(names)
    cg, fg = _match(names, coarse), _match(names, fine)
    if not _sane([g for g, _ in cg], w, head): return None
    stage_of = {n: i for i, (g, _) in enumerate(cg) for n in g}
    if any(len({stage_of[n] for n in g}) > 1 for g, _ in fg): fg = cg
    last = len(cg) - 1
    blocks = [Block(g, _span(g), 'head' if stage_of[g[0]] == last and (rest or head & set(g)) else
                    'stem' if stage_of[g[0]] == 0 else 'body', stage_of[g[0]]) for g, rest in fg]
    return _pre_head(blocks, body, head)


def _pre_head(blocks: list[Block], body: nn.Module, head: set[str]) -> list[Block]:
    "Layers with weight matrices leading timm's unmatched rest (`conv_head`, `pre_logits`) run before the classifier: a body block"
    mats = {_owner(n) for n, p in _params(body) if p.ndim >= 2}
    outs = {m.out_features for c in _classifier(body) for m in c.modules() if isinstance(m, nn.Linear)}
    mats -= {n for n, m in _modules(body) if isinstance(m, nn.Linear) and m.out_features in outs}  # aux heads
    out = []
    for b in blocks:
        pre = []
        for n in (b.params if b.role == 'head' else []):
            if n in head or _owner(n) not in mats: break
            pre.append(n)
        tops = {n.split('.')[0] for n in pre}
        pre = list(itertools.takewhile(lambda n: n.split('.')[0] in tops and n not in head, b.params)) if pre else []
        if pre and len(pre) < len(b.params):
            out.append(Block(pre, _span(pre), 'body', out[-1].stage if out else b.stage))
            b.params = b.params[len(pre):]
            b.modules = _span(b.params)
        out.append(b)
    return out


def _fix(blocks: list[Block], body: nn.Module) -> list[Block]:
    "Apply `FIXES`: move each matching parameter into the block of the parameter its template names"
    where = {n: b for b in blocks for n in b.params}
    targets: dict[str, Block | None] = {}
    cands = [n for n in where if _ANY_FIX.match(n)]
    for src, dst in FIXES:
        rx = re.compile(src)
        for n in [n for n in cands if rx.match(n)]:
            tpl = dst(body) if callable(dst) else rx.match(n).expand(dst)
            if tpl not in targets:
                hits = [m for m in where if re.match(tpl.lstrip('>'), m)]
                targets[tpl] = where[hits[-1 if tpl.startswith('>') else 0]] if hits else None
            to = targets[tpl]
            if to is None or to is where[n]: continue
            where[n].params.remove(n)
            to.params.append(n)
            to.whole, where[n] = True, to
            to.modules.append(_owner(n))
    for b in blocks: b.modules = [m for m in dict.fromkeys(b.modules) if any(_under(p, m) for p in b.params)]
    return [b for b in blocks if b.params]


def _module_name(body: nn.Module, m: nn.Module) -> str | None:
    return next((n for n, x in _modules(body) if x is m), None)


def _span(params: list[str]) -> list[str]:
    "The distinct owning modules of `params`, in order"
    return list(dict.fromkeys(_owner(p) for p in params))


# ---- generic structure detection

class _Tree:
    "Parameter counts per module name (head excluded) and the modules that hold parameters, for structure detection"
    def __init__(self, body: nn.Module, heads: list[str]):
        self.body, self.heads = body, heads
        self.mods = dict(_modules(body))
        self.w: dict[str, int] = {}
        for n, p in _params(body):
            if self.in_head(n): continue
            parts = n.split('.')
            for i in range(len(parts)): self.w['.'.join(parts[:i])] = self.w.get('.'.join(parts[:i]), 0) + p.numel()

    def in_head(self, name: str) -> bool: return any(_under(name, h) for h in self.heads)

    def kids(self, node: str) -> list[str]:
        "Parameter-holding children of `node` outside the head; a head's ancestor is replaced by its own kids"
        out = []
        for n, _ in self.mods[node].named_children():
            full = f'{node}.{n}' if node else n
            if any(_under(h, full) and h != full for h in self.heads): out += self.kids(full)
            elif self.w.get(full) and not self.in_head(full): out.append(full)
        return out

    def cls(self, name: str) -> type: return type(self.mods[name])
    def leaf(self, name: str) -> bool: return not any(True for _ in self.mods[name].children())


def _under(name: str, mod: str) -> bool:
    return mod == '' or name == mod or name.startswith(mod + '.')


def _pools(tree: _Tree, node: str) -> list[int]:
    "Positions (in `tree.kids(node)` terms: index of the next kid) of parameter-free pooling children of `node`"
    kids, cuts, seen = tree.kids(node), [], 0
    for n, c in tree.mods[node].named_children():
        full = f'{node}.{n}' if node else n
        if full in kids: seen += 1
        elif 'pool' in type(c).__name__.lower() and 0 < seen < len(kids): cuts.append(seen)
    return sorted(set(cuts))


def _aux(name: str) -> bool:
    "An auxiliary classifier (googlenet `aux1`, inception `AuxLogits`): not used in eval mode, ignored when weighing"
    return name.rpartition('.')[2].lower().startswith('aux')


def _core_weight(tree: _Tree, kids: list[str]) -> int: return sum(tree.w[k] for k in kids if not _aux(k))


def _window(tree: _Tree, kids: list[str]) -> tuple[int, int, type] | None:
    "The run of composite kids around the most repeated class (ties: the heavier), when it holds half the weight"
    total, best = _core_weight(tree, kids), None
    for c in dict.fromkeys(tree.cls(k) for k in kids if not _aux(k)):
        at = [i for i, k in enumerate(kids) if tree.cls(k) is c]
        lo, hi = at[0], at[-1] + 1
        if len(at) < 2 or any(tree.leaf(k) for k in kids[lo:hi]): continue
        wt = _core_weight(tree, kids[lo:hi])
        if max(tree.w[kids[i]] for i in at) * 10 > wt * 9: continue  # one member is nearly all of it: look inside
        if wt * 2 >= total and (best is None or (len(at), wt) > best[0]): best = ((len(at), wt), (lo, hi, c))
    return best and best[1]


def _descend(tree: _Tree) -> tuple[str, list[str], list[str]]:
    "Walk down to the node holding the trunk: returns it with the stem and tail siblings met on the way"
    node, stem, tail = '', [], []
    while True:
        kids = tree.kids(node)
        if not kids or _window(tree, kids): return node, stem, tail
        heavy = max(kids, key=lambda k: 0 if _aux(k) else tree.w[k])
        sub = tree.kids(heavy)
        if tree.w[heavy] * 2 < _core_weight(tree, kids) or len(sub) < 2 or _flat(tree, heavy) and not _pools(tree, heavy):
            return node, stem, tail
        i = kids.index(heavy)
        stem, tail, node = stem + kids[:i], kids[i + 1:] + tail, heavy


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
        if issubclass(c, _CONTAINERS): stages = _cut(kids[lo:hi], [i - lo for i in range(lo + 1, hi) if tree.cls(kids[i]) is c])
        else: stages = _leafish_stages(tree, node, kids, lo, hi, c)
        return kids[:lo], stages, kids[hi:]
    segs = _fallback_segments(tree, node, kids)
    return (segs[0] if len(segs) > 1 else []), segs[1:] if len(segs) > 1 else segs, []


def _fallback_segments(tree: _Tree, node: str, kids: list[str]) -> list[list[str]]:
    "No repeated run: cut a flat node at its pools; elsewhere expand flat kids at their pools, runs of one class together"
    if _flat(tree, node) and _pools(tree, node): return _cut(kids, _pools(tree, node))
    segs = []
    for k in kids:
        if not tree.leaf(k) and _flat(tree, k) and _pools(tree, k): segs += _cut(tree.kids(k), _pools(tree, k))
        elif segs and tree.cls(segs[-1][-1]) is tree.cls(k): segs[-1].append(k)
        else: segs.append([k])
    return segs


def _stage_blocks(tree: _Tree, stage: list[str]) -> list[list[str]]:
    "Blocks of a stage: a container's parameter-holding kids, other modules whole"
    out = []
    for k in stage:
        sub = tree.kids(k) if isinstance(tree.mods[k], _CONTAINERS) else []
        out += [[s] for s in sub] if len(sub) > 1 else [[k]]
    return out


@register_strategy('generic')
def _generic_blocks(body: nn.Module, headless: bool) -> list[Block]:
    "Blocks from the module tree: the main run of repeated blocks (stages), what runs before it (stem) and after (head)"
    names = {m: n for n, m in _modules(body)}
    w = _weights(body)
    heads = [] if headless else _head_names(body, names)
    tree = _Tree(body, heads)
    node, stem, tail = _descend(tree)
    kstem, stages, ktail = _stages_at(tree, node)
    stem, tail = stem + kstem, ktail + tail
    late = _late(tail, heads, list(w))
    tail = [t for t in tail if t not in late]
    mods = [[stem]] if stem else []
    mods += [_stage_blocks(tree, s) for s in stages]
    if tail: mods[-1] = mods[-1][:-1] + [mods[-1][-1] + tail] if mods else [tail]
    blocks = [Block([], b, 'stem' if stem and i == 0 else 'body', i) for i, st in enumerate(mods) for b in st]
    if heads: blocks.append(Block([], heads + late, 'head', len(mods)))
    return _after_head(_fill(blocks, w, body), list(w))


def _late(mods: list[str], heads: list[str], names: list[str]) -> list[str]:
    "Those of `mods` defined after the head (a final norm): they run after the classifier"
    if not heads: return []
    first = lambda m: next((i for i, n in enumerate(names) if _under(n, m)), -1)
    start = min(first(h) for h in heads)
    return [m for m in mods if first(m) > start]


def _after_head(blocks: list[Block], names: list[str]) -> list[Block]:
    "Last body blocks defined after the classifier (a final norm) run after it: they join the head, never the whole body"
    heads = [b for b in blocks if b.role == 'head']
    if not heads: return blocks
    at = {n: i for i, n in enumerate(names)}
    start = min(at[p] for b in heads for p in _own(b))
    body = [b for b in blocks if b.role != 'head']
    late = list(itertools.takewhile(lambda b: min(at[p] for p in _own(b)) > start, reversed(body)))
    if not late or len(late) == len(body): return blocks  # the classifier defined first says nothing of the order
    for b in reversed(late): heads[0].params += b.params; heads[0].modules += b.modules
    return [b for b in blocks if all(b is not x for x in late)]


def _own(b: Block) -> list[str]:
    "Parameters of `b` held under its modules (not those of an ancestor that `_fill` gave it), else all of them"
    return [p for p in b.params if any(_under(p, m) for m in b.modules)] or b.params


def _fill(blocks: list[Block], w: dict[str, int], body: nn.Module) -> list[Block]:
    "Give each block the parameters under its modules; direct parameters of modules above them join one block each"
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
    rank = _use_rank(body) if any(_LATE.search(n.rpartition('.')[2]) for n in above) else {}
    for n in above: _ancestor_block(n, blocks, rank).params.append(n)
    pos = {n: i for i, n in enumerate(w)}
    for b in blocks: b.params.sort(key=pos.get)  # definition order, as the model lists them
    return [b for b in blocks if b.params]


def _ancestor_block(name: str, blocks: list[Block], rank: dict[str, int]) -> Block:
    "Block for a parameter held above the blocks: the last one under its owner used before it, else the first (cls_token)"
    owner = _owner(name)
    under = [b for b in blocks if any(_under(m, owner) for m in b.modules)] or blocks
    if name in rank:
        before = [b for b in under if b.params and min(rank.get(p, len(rank)) for p in b.params) < rank[name]]
        if before: return before[-1]
    elif _LATE.search(name.rpartition('.')[2]): return under[-1]  # no forward pass: a scale is used after the children
    return next((b for b in under if b.role != 'head'), under[0])


def _use_rank(body: nn.Module) -> dict[str, int]:
    "Rank of each parameter of `body` by first use in a forward pass on meta copies of its tensors; empty when it fails"
    def _rank():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                return {n: i for i, n in enumerate(_meta_order(body))}
        except Exception: return {}
    return _memo(('u', id(body)), _rank)


# ---------------------------------------------------------------- plans and groups

def plan(model, strategy: str | None = None) -> Plan:
    "The ordered blocks of `model` (a module, wrapped or not, or an arch name) from the first strategy that applies"
    model = _as_model(model)
    with _scope(): return _plan(model, strategy)


def _plan(model: nn.Module, strategy: str | None) -> Plan:
    v = _view(model)
    names = [strategy] if strategy else list(STRATEGIES)
    for s in names:
        if s not in STRATEGIES: raise ValueError(f"unknown split strategy {s!r}; valid: {', '.join(STRATEGIES)}")
        blocks = STRATEGIES[s](v.body, v.head is not None)
        if blocks:
            blocks = _fix(blocks, v.body)
            break
    if not blocks and v.head is None:
        raise ValueError(f"{type(model).__name__} has no parameters to split")
    blocks = [Block([v.prefix + p for p in b.params], [v.prefix + m if m else v.prefix.rstrip('.') for m in b.modules],
                    b.role, b.stage, b.whole) for b in blocks]
    if v.head is not None: blocks = _add_head(blocks, model, v.head)
    return Plan(model, blocks, s)


def _add_head(blocks: list[Block], model: nn.Module, head: str) -> list[Block]:
    "Append the fastai head (its parameters) to the body's blocks; a body head (norm left over) joins it"
    params = [n for n, _ in _params(model) if _under(n, head)]
    last = max((b.stage for b in blocks), default=-1) + 1
    for b in blocks:
        if b.role == 'head': b.stage = last
    return blocks + [Block(params, [head], 'head', last)]


def _to_params(model: nn.Module, groups: list[list[str]]) -> list[list[nn.Parameter]]:
    ps = dict(_params(model))
    out = [[ps[n] for n in g] for g in groups]
    check_groups(model, out)
    return out


def _by_stage(p: Plan, attr: str) -> list[list[str]]:
    "The `attr` ('params' or 'modules') of the blocks of `p`, gathered per `split_stages` group (stem, stages, head)"
    groups, key = [], None
    for b in p.blocks:
        k = ('head',) if b.role == 'head' else (b.stage,)
        if k != key: groups.append([])
        groups[-1] += getattr(b, attr)
        key = k
    return groups


def _stage_names(p: Plan) -> list[list[str]]: return _by_stage(p, 'params')


def stage_blocks(model) -> list[list[str]]:
    "Dotted module names per `split_stages` group (stem, stages, head): the module ranges of each group"
    return _by_stage(plan(model), 'modules')


def split_stages(model) -> list[list[nn.Parameter]]:
    "Layer groups of `model`: the stem, one group per stage, and the head last"
    with _scope():
        p = plan(model)
        groups = _stage_names(p)
        if len(groups) == 1: _warn_one(p)
        return _to_params(p.model, groups)


def _warn_one(p: Plan) -> None:
    "Warn when `p` gives one group though its model has several blocks or parameter-holding children: never silently"
    kids = [n for n, c in p.model.named_children() if any(True for _ in c.parameters())]
    if len(p.blocks) > 1 or len(kids) > 1:
        warnings.warn(f"{type(p.model).__name__}: one layer group for {len(p.blocks)} blocks and {len(kids)} children "
                      f"with parameters ({', '.join(kids[:4])}{', ...' if len(kids) > 4 else ''}); split_n or split_at cut it")


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number of groups >= 1, got {n!r}")
    return n


def balance(weights: Sequence[int], k: int) -> list[int]:
    "Lengths of `k` contiguous non-empty runs of `weights` (k <= len) whose largest sum is as small as can be"
    lo, hi = max(weights), sum(weights)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_pack(weights, mid, k)) <= k: hi = mid
        else: lo = mid + 1
    return [len(r) for r in _pack(weights, lo, k)]


def _pack(weights: Sequence[int], cap: int, k: int) -> list[list[int]]:
    "Greedy runs under `cap`, closing a run early when each remaining item must start one to reach `k` runs"
    runs = []
    for i, x in enumerate(weights):
        close = runs and (sum(runs[-1]) + x > cap or len(weights) - i <= k - len(runs))
        if not runs or close: runs.append([])
        runs[-1].append(x)
    return runs


def split_n(model, n: int) -> list[list[nn.Parameter]]:
    "`n` contiguous layer groups of `model`, cut at block boundaries and balanced by parameter count, the head last"
    with _scope(): return _split_n(plan(model), _check_n(n))


def _split_n(p: Plan, n: int) -> list[list[nn.Parameter]]:
    groups = _n_groups(p, n)
    if len(groups) < n:
        warnings.warn(f"{type(p.model).__name__} has {len(p.body)} body blocks: {len(groups)} groups instead of {n}")
    return _to_params(p.model, groups)


def _n_groups(p: Plan, n: int) -> list[list[str]]:
    "Names in at most `n` groups: the body blocks (refined where heavy) balanced into `n - 1` runs, then the head"
    body, head = p.body, [q for b in p.head for q in b.params]
    if n == 1 or not body: return [[q for b in p.blocks for q in b.params]]
    k = n - 1 if head else n
    w = _weights(p.model)
    body = _refine(body, w, sum(w[q] for b in body for q in b.params) / k, p.model)
    lens, groups, i = balance([sum(w[q] for q in b.params) for b in body], min(k, len(body))), [], 0
    for m in lens:
        groups.append([q for b in body[i:i + m] for q in b.params])
        i += m
    return groups + ([head] if head else [])


def _refine(blocks: list[Block], w: dict[str, int], cap: float, model: nn.Module) -> list[Block]:
    "Blocks heavier than `cap` cut into the blocks of the container they hold, in order, as far as they go"
    out = []
    for b in blocks:
        parts = _sub_blocks(b, model) if sum(w[q] for q in b.params) > cap and not b.whole else [b]
        out += _refine(parts, w, cap, model) if len(parts) > 1 else parts
    return out


def _sub_blocks(b: Block, model: nn.Module) -> list[Block]:
    "`b` cut into the children of the sequence below the module all its parameters share; the others join an end part"
    parts = [n.split('.') for n in b.params]
    depth = 0
    while all(len(q) > depth + 1 and q[depth] == parts[0][depth] for q in parts): depth += 1
    top = model.get_submodule('.'.join(parts[0][:depth]))
    if isinstance(top, _CONTAINERS): first, last = [n for n, q in zip(b.params, parts) if len(q) <= depth + 1], []
    else:
        seq = _main_seq(top)
        if seq is None: return [b]  # a residual block or a module with no one sequence inside: keep it whole
        first, last = _ends(b.params, parts, depth, top, seq)
        depth += 1
    runs = {}
    for n, q in zip(b.params, parts):
        if n not in first and n not in last: runs.setdefault('.'.join(q[:depth + 1]), []).append(n)
    if len(runs) < 2: return [b]
    subs = [Block(ps, [k], b.role, b.stage) for k, ps in runs.items()]
    subs[0].params, subs[-1].params = first + subs[0].params, subs[-1].params + last
    return subs


def _main_seq(top: nn.Module) -> str | None:
    "The child of `top` that is a sequence of 2+ modules holding most of its parameters (a stage's `blocks`), if any"
    total = sum(p.numel() for p in top.parameters())
    return next((n for n, c in top.named_children() if isinstance(c, _CONTAINERS) and len(c) > 1
                 and 2 * sum(p.numel() for p in c.parameters()) > total), None)


def _ends(params: list[str], parts: list[list[str]], depth: int, top: nn.Module, seq: str) -> tuple[list[str], list[str]]:
    "Parameters of `top` outside its sequence `seq`: those that run first (defined before it, downsampling) and last"
    kids = [n for n, _ in top.named_children()]
    first, last = [], []
    for n, q in zip(params, parts):
        kid = q[depth] if len(q) > depth + 1 else None
        if kid == seq: continue
        if kid is None: late = bool(_LATE.search(q[-1]))
        else: late = kids.index(kid) > kids.index(seq) and not kid.startswith('down')
        (last if late else first).append(n)
    return first, last


def _cut_names(model: nn.Module, paths) -> list[str]:
    "Dotted module names for `paths`: one path (int, dotted name, index list) or a list of them"
    if isinstance(paths, (int, str)): paths = [paths]
    paths = list(paths)
    if len(paths) > 1 and all(isinstance(x, int) and not isinstance(x, bool) for x in paths):
        raise ValueError(f"split_at({paths}) is ambiguous: write {[paths]} for one cut at index path {paths}, "
                         f"or {[[x] for x in paths]} for {len(paths)} cuts")
    v = _view(model)
    out = []
    for path in paths:
        try: out.append(find_module(model, path)[0])
        except (IndexError, KeyError, TypeError) as e:
            if v.body is model: raise
            try: name = find_module(v.body, path)[0]
            except (IndexError, KeyError, TypeError): raise e from None
            out.append(v.prefix + name)
    return out


def split_at(model, paths) -> list[list[nn.Parameter]]:
    "Layer groups of `model` cut before each module in `paths` (index paths like `[4]`, dotted names like `'layer2'`)"
    model = _as_model(model)
    cuts = _cut_names(model, paths)
    if not cuts: raise ValueError("split_at needs at least one cut: an index path like [4] or a dotted name like 'layer2'")
    order = [n for n, _ in model.named_modules()]
    pos = {n: i for i, n in enumerate(order)}
    bounds = sorted({pos[c] for c in cuts})
    groups = [[] for _ in range(len(bounds) + 1)]
    for n, _ in model.named_parameters(): groups[bisect.bisect_right(bounds, _param_pos(n, pos))].append(n)
    starts = ['the start'] + [repr(order[b]) for b in bounds]
    empty = [s for g, s in zip(groups, starts) if not g]
    if empty: raise GroupError(f"cuts at {cuts} leave empty groups (from {', '.join(empty)}); cut only where parameters follow")
    return _to_params(model, groups)


def _param_pos(name: str, pos: dict[str, int]) -> int:
    "Position, in `named_modules` order, of the module holding parameter `name`"
    m = _owner(name)
    while m not in pos: m = _owner(m)
    return pos[m]


def group_names(model, groups: list[list[nn.Parameter]]) -> list[list[str]]:
    "The dotted parameter names in each of `groups` (anything else shown as `<what it is>`)"
    model = _grouped_model(model)
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names.get(id(p), f'<{_what(p)}>') for p in g] for g in groups]


def check_groups(model, groups) -> None:
    "Raise `GroupError` unless `groups` partition the parameters of `model`: naming every missing, duplicated or foreign one"
    model = _grouped_model(model)
    names = {id(p): n for n, p in _params(model)}
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
    if msgs: raise GroupError(f"layer groups do not partition the parameters of {type(model).__name__}: " + '; '.join(msgs))


# ---------------------------------------------------------------- fastai splitters

@dataclass
class Splitter:
    "A picklable fastai `splitter` (so `learn.export()` works): `kind` 'stages', 'n' (`arg` groups) or 'at' (`arg` cuts)"
    kind: str = 'stages'
    arg: object = None

    def __post_init__(self):
        if self.kind not in _SPLITS: raise ValueError(f"unknown splitter kind {self.kind!r}; valid: {', '.join(_SPLITS)}")
        if self.kind == 'n': _check_n(self.arg)

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


# ---------------------------------------------------------------- the group table

@dataclass
class GroupRow:
    "One layer group: its position, first and last module, number of tensors and parameters, share of the total"
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
    def __init__(self, rows: list[GroupRow], title: str = ''):
        self.rows, self.title = rows, title

    def to_text(self) -> str:
        lrs = any(r.lr is not None for r in self.rows)
        heads = ['group', 'first module', 'last module', 'tensors', 'params', '%'] + ['lr'] * lrs
        rows = [[r.group, r.first, r.last, r.tensors, fmt_int(r.params), f'{r.pct:.1f}'] + ([f'{r.lr:.3g}'] if lrs else [])
                for r in self.rows]
        total = sum(r.params for r in self.rows)
        return f'{pretty_table(heads, rows)}\nTotal params: {total:,} in {len(self.rows)} groups'

    def to_df(self):
        import pandas as pd
        df = pd.DataFrame([(r.group, r.first, r.last, r.tensors, r.params, round(r.pct, 2), r.trainable)
                           for r in self.rows], columns=['group', 'first', 'last', 'tensors', 'params', 'pct', 'trainable'])
        if any(r.lr is not None for r in self.rows): df['lr'] = [r.lr for r in self.rows]
        return df


def group_table(model, groups: list[list[nn.Parameter]], lrs: Sequence[float] | None = None) -> GroupTable:
    "A table of `groups` of `model`: per group the first and last module path, tensors, parameters, % of total (and `lrs`)"
    model = _grouped_model(model)
    if lrs is not None and len(lrs) != len(groups):
        raise ValueError(f"lrs has {len(lrs)} learning rates for {len(groups)} groups; give one per group")
    names = group_names(model, groups)
    total = sum(p.numel() for g in groups for p in g) or 1
    rows = []
    for i, (g, ns) in enumerate(zip(groups, names)):
        n = sum(p.numel() for p in g)
        mods = [_owner(x) or '(root)' for x in ns] or ['']
        rows.append(GroupRow(i, mods[0], mods[-1], len(g), n, 100 * n / total, sum(p.numel() for p in g if p.requires_grad),
                             None if lrs is None else float(lrs[i])))
    return GroupTable(rows, f'{type(model).__name__}: {len(rows)} layer groups')


# ---------------------------------------------------------------- forward order (for tests and benchmarks)

_META_FUNCS = {'__get__', 'dim', 'size', 'numel', 'ndimension', 'nelement', 'is_floating_point', 'element_size',
               'is_contiguous', 'stride', 'data_ptr', 'requires_grad_', '__len__', 'type', 'get_device'}


class _FirstUse(torch.overrides.TorchFunctionMode):
    "Record, by id, the first time each tensor in `ids` is the input of a torch operation"
    def __init__(self, ids: set[int]):
        super().__init__()
        self.ids, self.seen = ids, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, '__name__', '') not in _META_FUNCS:
            for a in (*args, *kwargs.values()):
                for t in (a if isinstance(a, (list, tuple)) else (a,)):
                    if id(t) in self.ids and id(t) not in self.seen: self.seen[id(t)] = len(self.seen)
        return func(*args, **kwargs)


def guess_input_size(model: nn.Module) -> tuple[int, ...]:
    "An input size `model` accepts: timm's pretrained config, 299 for Inception v3, else (1, 3, 224, 224)"
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    if cfg.get('input_size'): return (1, *cfg['input_size'])
    if type(model).__name__ == 'Inception3': return (1, 3, 299, 299)
    return (1, 3, 224, 224)


def first_use_order(model, input_size: Sequence[int] | None = None, device=None) -> list[str]:
    "Dotted names of the parameters of `model` in the order a forward pass (eval mode) first uses them; unused ones left out"
    model = _as_model(model)
    device = device or next(iter(model.parameters()), torch.empty(0, device='meta')).device
    return _run_order(model, torch.zeros(*(input_size or guess_input_size(model)), device=device))


def _meta_order(model: nn.Module) -> list[str]:
    "`first_use_order` of a copy of `model` with its parameters and buffers on meta: `model` itself is not touched"
    m = model if all(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())) else copy_to(model, 'meta')
    return _run_order(m, torch.zeros(*guess_input_size(model), device='meta'))


def _run_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    "Parameter names of `model` in first-use order of an eval forward pass on `x`"
    named = {id(p): n for n, p in model.named_parameters()}
    rec = _FirstUse(set(named))
    with eval_mode(model), torch.no_grad(), rec: model(x)
    return [named[i] for i in sorted(rec.seen, key=rec.seen.get)]


def order_violations(model, groups: list[list[nn.Parameter]], order: list[str] | None = None,
                     input_size: Sequence[int] | None = None) -> list[str]:
    "Each parameter first used before a parameter of an earlier group, said with that one (empty: groups follow forward order)"
    model = _grouped_model(model)
    order = order if order is not None else first_use_order(model, input_size)
    rank = {n: i for i, n in enumerate(order)}
    bad, done, at = [], -1, None
    for i, ns in enumerate(group_names(model, groups)):
        used = [rank[n] for n in ns if n in rank]
        if not used: continue
        bad += [f'{order[r]} (group {i}) is used before {order[done]} (group {at})' for r in used if r < done]
        if max(used) > done: done, at = max(used), i
    return bad
