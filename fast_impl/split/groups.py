"The group functions: stages (`split_stages`), N balanced groups (`split_n`) and explicit cuts (`split_at`)."
from __future__ import annotations

__all__ = ['split_stages', 'split_blocks', 'split_n', 'split_at', 'stage_blocks', 'balance',
           'named_stages', 'named_blocks', 'named_n', 'named_at']

import warnings
from typing import Sequence

import torch
from torch import nn

from ..checks import check_count
from ..inputs import input_sizes
from ..tree import find_module
from ..layers import CONTAINERS, is_norm
from .blocks import LATE, Block, Index, Plan, as_model, owner, under, view
from .check import GroupError, check_groups, name_violations
from .plan import plan
from .rules import head_modules, in_forward_order, norms_with_layers


def _by_stage(p: Plan, attr: str) -> list[list[str]]:
    "The `attr` ('params' or 'modules') of the blocks of `p` per `split_stages` group (stem, stages, head)"
    groups, key = [], None
    for b in p.blocks:
        k = ('head',) if b.role == 'head' else (b.stage,)
        if k != key: groups.append([])
        groups[-1] += getattr(b, attr)
        key = k
    return groups


def stage_blocks(model, head=None, input_data=None) -> list[list[str]]:
    "Dotted module names per `split_stages` group (stem, stages, head): the module ranges of each group"
    return _by_stage(_plan(model, head, input_data), 'modules')


def _plan(model, head, input_data=None) -> Plan:
    "The plan of `model` (or `model` itself when it is one), with `head` modules in the head"
    if isinstance(model, Plan) and (head is not None or input_data is not None):
        raise ValueError("head= and input_data= go to plan(model, ...) when a Plan is given; this one is "
                         "made already")
    return plan(model, head=head, input_data=input_data)


def split_stages(model, head=None, input_data=None) -> list[list[nn.Parameter]]:
    """Layer groups of `model`: the stem, one group per stage, the head last (`head`: modules belonging to it;
    `input_data`: example inputs for the forward pass that orders them, for models not fed one image)"""
    return [g for _, g in named_stages(model, head, input_data)]


def named_stages(model, head=None, input_data=None) -> list[tuple[str, list[nn.Parameter]]]:
    "`split_stages` with each group's name: 'stem', 'stage 1', ..., 'head'"
    p = _plan(model, head, input_data)
    groups = _by_stage(p, 'params')
    if len(groups) == 1: _warn_one(p)
    return list(zip(_stage_names(p), _to_params(p, groups)))


def _stage_names(p: Plan) -> list[str]:
    "The name of each `split_stages` group of `p`: the stem, stages counted from 1, decoder(s), the head"
    names, key = [], None
    for b in p.blocks:
        k = ('head',) if b.role == 'head' else (b.stage,)
        if k != key:
            body = sum(n.startswith('stage') for n in names) + 1
            names.append(b.role if b.role in ('stem', 'head', 'decoder') else f'stage {body}')
        key = k
    dec = [i for i, n in enumerate(names) if n == 'decoder']
    for j, i in enumerate(dec if len(dec) > 1 else []): names[i] = f'decoder {j + 1}'
    return names


def split_blocks(model, head=None, input_data=None) -> list[list[nn.Parameter]]:
    """One layer group per block, the granularity of BEiT-style layer decay: the stem (with the embeddings),
    each block, then the final norm with the head. A timm model with a `group_matcher` is cut by timm's own
    fine matcher (as `timm.optim.param_groups_layer_decay` does)."""
    return [g for _, g in named_blocks(model, head, input_data)]


def named_blocks(model, head=None, input_data=None) -> list[tuple[str, list[nn.Parameter]]]:
    "`split_blocks` with each group's name: 'stem', 'block 1', ..., 'head'"
    if not isinstance(model, Plan):
        timm = _timm_blocks(as_model(model), head, input_data)
        if timm is not None: return timm
    p = _plan(model, head, input_data)
    stem = [q for b in p.body if b.role == 'stem' for q in b.params]
    body = [list(b.params) for b in p.body if b.role != 'stem']
    tail = [q for b in p.head for q in b.params]
    if body and tail:  # the final norm: trailing norm layers of the last block, outside its first module
        last, mods, w = body[-1], dict(p.index.modules), p.index.weights
        # the block's own module: the one holding most of its weights
        first = max(p.body[-1].modules, key=lambda m: sum(w[q] for q in last if under(q, m)))
        linked = p.index.trace.norm_of if p.index.trace is not None else {}
        while len(last) > 1 and is_norm(mods[owner(last[-1])]) and not under(last[-1], first):
            if any(owner(q) == linked.get(owner(last[-1])) for q in last): break  # norm stays with layer
            tail.insert(0, last.pop())
    groups = [g for g in [stem] + body + [tail] if g]
    names = ((['stem'] if stem else []) + [f'block {i + 1}' for i in range(len(body))]
             + (['head'] if tail else []))
    if len(groups) == 1: _warn_one(p)
    return list(zip(names, _to_params(p, groups)))


def _timm_body(model: nn.Module) -> tuple[str, nn.Module] | None:
    "(prefix, module) of the timm model with a `group_matcher` `model` is or wraps (over half its weights)"
    total = sum(p.numel() for p in model.parameters())
    for name, m in model.named_modules():  # the root first, then the outermost
        if not callable(getattr(m, 'group_matcher', None)) or 'timm' not in type(m).__module__: continue
        if 2 * sum(p.numel() for p in m.parameters()) > total: return (f'{name}.' if name else ''), m
    return None


def _classifier_params(m: nn.Module) -> set[int]:
    "ids of the parameters of timm's `get_classifier()` (one module, or several: LeViT's head and head_dist)"
    get = getattr(m, 'get_classifier', None)
    heads = get() if callable(get) else ()
    heads = [heads] if isinstance(heads, nn.Module) else [h for h in heads if isinstance(h, nn.Module)]
    return {id(q) for h in heads for q in h.parameters()}


def _timm_blocks(model: nn.Module, head, input_data=None) -> list[tuple[str, list[nn.Parameter]]] | None:
    """timm's fine `group_matcher` groups of the timm model `model` is or wraps (a fastai body, a user's
    `backbone`), the head last; None where there is none. Layers outside it that run before it join the stem,
    the others the head."""
    found = _timm_body(model)
    if found is None: return None
    prefix, body = found
    from timm.models import group_parameters
    try: layer = group_parameters(body, body.group_matcher(coarse=False), reverse=True)
    except Exception: return None
    ix = Index(model, input_data=input_data)
    first, last = min(layer.values(), default=0), max(layer.values(), default=0) + 1
    inside = [n for n in ix.weights if n.startswith(prefix)]
    start = min((ix.rank[n] for n in inside if n in ix.rank), default=None)
    # unmatched (the classifier, a new head): last, as timm does; a wrapper's own layers before the body: stem
    before = lambda n: start is not None and ix.rank.get(n, start) < start
    ids = {n: layer.get(n[len(prefix):], last) if n.startswith(prefix) else first if before(n) else last
           for n in ix.weights}
    ids.update({n: last for n in ix.weights for h in head_modules(model, head) if under(n, h)})
    order = sorted(set(ids.values()))
    if len(order) < 2: return None
    groups = [[n for n in ix.weights if ids[n] == k] for k in order]
    # the head: the classifier's group (timm puts what its matcher misses there), or the modules `head` names
    clf, own = _classifier_params(body), dict(ix.params)
    has_head = order[-1] == last or any(id(own[n]) in clf for n in groups[-1])
    if has_head and len(groups) > 2:
        groups = _on_map_to_body(groups, ix, {n for n in own if id(own[n]) in clf})
    names = ['stem'] + [f'block {i}' for i in range(1, len(groups) - has_head)] + ['head'] * has_head
    return list(zip(names, _to_params(Plan(model, [], 'timm', ix), groups)))


def _on_map_to_body(groups: list[list[str]], ix: Index, clf: set[str]) -> list[list[str]]:
    """Rule 2 on timm's head group: its layers that still run on the feature map (efficientvit's
    `head.in_conv`, with their norms) join the last block, as under `split_stages`; the final norm stays
    (BEiT-style decay)"""
    tr = ix.trace
    if tr is None or tr.head_from is None: return groups
    mods, late = dict(ix.modules), set(tr.late)
    early = lambda n: n in tr.rank and n not in late and n not in clf
    layers = {owner(n) for n in groups[-1] if early(n) and not is_norm(mods[owner(n)])}
    norms = {m for m, lay in tr.norm_of.items() if lay in layers}
    move = [n for n in groups[-1] if early(n) and (owner(n) in layers or owner(n) in norms)]
    if not move: return groups
    return groups[:-2] + [groups[-2] + move, [n for n in groups[-1] if n not in set(move)]]


def _warn_one(p: Plan) -> None:
    "Warn when `p` gives one group though its model has several blocks or parameter-holding children"
    # never silently
    kids = [n for n, c in p.model.named_children() if any(True for _ in c.parameters())]
    if len(p.blocks) > 1 or len(kids) > 1:
        warnings.warn(f"{type(p.model).__name__}: one layer group for {len(p.blocks)} blocks and "
                      f"{len(kids)} children with parameters ({', '.join(kids[:4])}"
                      f"{', ...' if len(kids) > 4 else ''}); split_n or split_at cut it")


def _to_params(p: Plan, groups: list[list[str]]) -> list[list[nn.Parameter]]:
    "The parameters of each group of names, in forward order, checked to partition the model"
    # warns where the order breaks
    ps, pos = dict(p.index.params), p.index.position
    out = [[ps[n] for n in sorted(g, key=pos.get)] for g in groups]
    check_groups(p.model, out)
    _warn_order(p, groups)
    return out


def _warn_order(p: Plan, groups: list[list[str]]) -> None:
    "Rule 1's warnings: no forward pass could run, or a parameter used before an earlier group's"
    # no forward pass: the registration order is used
    name, tr = type(p.model).__name__, p.index.trace
    if tr is None:
        warnings.warn(f"{name}: no forward pass on the meta device ran with input {_sizes(p)}, so the groups "
                      f"follow the order the modules were registered in; give example inputs, e.g. "
                      f"split_stages(model, input_data=torch.randn(1, 3, 64, 64)) (a tuple or a dict for "
                      f"several inputs; the same input_data= works in every split and in param_groups)",
                      stacklevel=3)
        return
    bad = name_violations(groups, tr.order)
    if bad: warnings.warn(f"{name}: {len(bad)} parameters are used before a parameter of an earlier "
                          f"group (first: {bad[0]}); the groups do not follow the forward order there",
                          stacklevel=3)


def _sizes(p: Plan) -> str:
    if p.index.input_data is not None: return 'input_data'
    if p.index.input_size is not None: return str(p.index.input_size)
    return ' or '.join(str(s) for s in input_sizes(p.model))


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


def split_n(model, n: int, head=None, input_data=None) -> list[list[nn.Parameter]]:
    "`n` contiguous layer groups of `model`, cut at block boundaries and balanced by parameter count"
    # the head last
    return [g for _, g in named_n(model, n, head, input_data)]


def named_n(model, n: int, head=None, input_data=None) -> list[tuple[str, list[nn.Parameter]]]:
    "`split_n` with each group's name: 'group 1', ..., and 'head' for the head group"
    n = check_count(n, 'n')
    p = _plan(model, head, input_data)
    groups = _n_groups(p, n)
    if len(groups) < n:
        warnings.warn(f"{type(p.model).__name__} has {len(p.body)} body blocks: "
                      f"{len(groups)} groups instead of {n}")
    heads = {q for b in p.head for q in b.params}
    names = [f'group {i + 1}' for i in range(len(groups))]
    if len(groups) > 1 and heads and set(groups[-1]) == heads: names[-1] = 'head'
    return list(zip(names, _to_params(p, groups)))


def _n_groups(p: Plan, n: int) -> list[list[str]]:
    "Names in at most `n` groups: body blocks (refined where heavy) balanced into `n - 1` runs, then the head"
    body, head = p.body, [q for b in p.head for q in b.params]
    if n == 1 or not body: return [[q for b in p.blocks for q in b.params]]
    k = n - 1 if head else n
    w = p.index.weights
    body = _refine(body, w, sum(w[q] for b in body for q in b.params) / k, p.model)
    body = in_forward_order(norms_with_layers(body, p.index), p.index)
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
    "`b` cut into the children of the sequence below the module all its parameters share"
    # the others join an end part
    parts = [n.split('.') for n in b.params]
    depth = 0
    while all(len(q) > depth + 1 and q[depth] == parts[0][depth] for q in parts): depth += 1
    top = model.get_submodule('.'.join(parts[0][:depth]))
    if isinstance(top, CONTAINERS):
        first, last = [n for n, q in zip(b.params, parts) if len(q) <= depth + 1], []
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
    "The child of `top` that is a sequence of 2+ modules holding most of its parameters, if any"
    # such as a stage's `blocks`
    total = sum(p.numel() for p in top.parameters())
    return next((n for n, c in top.named_children() if isinstance(c, CONTAINERS) and len(c) > 1
                 and 2 * sum(p.numel() for p in c.parameters()) > total), None)


def _ends(params: list[str], parts: list[list[str]], depth: int, top: nn.Module,
          seq: str) -> tuple[list[str], list[str]]:
    "Parameters of `top` outside its sequence `seq`: those that run first and those that run last"
    # first: defined before `seq`, or downsampling
    kids = [n for n, _ in top.named_children()]
    first, last = [], []
    for n, q in zip(params, parts):
        kid = q[depth] if len(q) > depth + 1 else None
        if kid == seq: continue
        if kid is None: late = bool(LATE.search(q[-1]))
        else: late = kids.index(kid) > kids.index(seq) and not kid.startswith('down')
        (last if late else first).append(n)
    return first, last


def _cut_names(model: nn.Module, paths) -> list[str]:
    "Dotted module names for `paths`: one path (int, dotted name, index list) or a list of them"
    if isinstance(paths, (int, str)): paths = [paths]
    paths = list(paths)
    if len(paths) > 1 and all(isinstance(x, int) and not isinstance(x, bool) for x in paths):
        raise ValueError(f"split_at({paths}) is ambiguous: write {[paths]} for one cut at index path "
                         f"{paths}, or {[[x] for x in paths]} for {len(paths)} cuts")
    v = view(model)
    out = []
    for path in paths:
        try: out.append(find_module(model, path)[0])
        except (IndexError, KeyError, TypeError) as e:
            if v.body is model: raise
            try: name = find_module(v.body, path)[0]
            except (IndexError, KeyError, TypeError): raise e from None
            out.append(v.prefix + name)
    return out


def split_at(model, paths, head=None, input_data=None) -> list[list[nn.Parameter]]:
    "Layer groups of `model` cut before each module in `paths`"
    return [g for _, g in named_at(model, paths, head, input_data)]


def named_at(model, paths, head=None, input_data=None) -> list[tuple[str, list[nn.Parameter]]]:
    "`split_at` with each group's name: 'group 1', ..., and 'head' for the head group `head=` makes"
    # paths: index paths like `[4]`, dotted names like `'layer2'`
    p = _plan(model, head, input_data) if head is not None else None
    ix = (p.index if p else model.index if isinstance(model, Plan)
          else Index(as_model(model), input_data=input_data))
    cuts = _cut_names(ix.model, paths)
    if not cuts: raise ValueError("split_at needs at least one cut: an index path like [4] "
                                  "or a dotted name like 'layer2'")
    # with `head=`, the plan's head group is last
    heads = {n for b in p.head for n in b.params} if p else set()
    seq = [n for n in ix.sequence if n not in heads]
    at = {n: i for i, n in enumerate(seq)}
    bounds = _bounds(ix, cuts, at)
    groups = [seq[a:b] for a, b in zip([0] + bounds, bounds + [len(seq)])]
    starts = ['the start'] + [repr(c) for c in cuts]
    empty = [f'{s} to the next cut' for g, s in zip(groups, starts) if not g]
    if empty or len(set(bounds)) < len(bounds):
        raise GroupError(f"cuts at {cuts} leave empty groups; "
                         "cut only where parameters follow, in forward order")
    tail = [n for n in ix.weights if n not in at]
    groups += [tail] if tail else []  # `tail`: the head
    names = [f'group {i + 1}' for i in range(len(groups))]
    if tail: names[-1] = 'head'
    return list(zip(names, _to_params(Plan(ix.model, [], 'at', ix), groups)))


def _bounds(ix: Index, cuts: list[str], at: dict[str, int]) -> list[int]:
    "Where each cut falls in `at`, checked: no cut given twice, the cuts in forward order"
    dup = list(dict.fromkeys(c for i, c in enumerate(cuts) if c in cuts[:i]))
    if dup: raise GroupError(f"split_at: cut {', '.join(map(repr, dup))} given twice; give each cut once")
    pos = [_cut_at(ix, c, at) for c in cuts]
    late = [(a, b) for (a, i), (b, j) in zip(zip(cuts, pos), zip(cuts[1:], pos[1:])) if j < i]
    if late:
        order = [c for _, c in sorted(zip(pos, cuts), key=lambda x: x[0])]
        raise GroupError(f"split_at: cut {late[0][1]!r} runs before {late[0][0]!r}, out of forward order; "
                         f"give the cuts in order: {order}")
    return pos


def _cut_at(ix: Index, cut: str, at: dict[str, int]) -> int:
    "Where `cut` falls in the sequence: its first parameter, or the first defined after it when it holds none"
    inside = [at[n] for n in ix.weights if under(n, cut) and n in at]
    if inside: return min(inside)
    pos = {n: i for i, (n, _) in enumerate(ix.modules)}
    later = [at[n] for n in at if _param_pos(n, pos) > pos[cut]]
    return min(later, default=len(at))


def _param_pos(name: str, pos: dict[str, int]) -> int:
    "Position, in `named_modules` order, of the module holding parameter `name`"
    m = owner(name)
    while m not in pos: m = owner(m)
    return pos[m]
