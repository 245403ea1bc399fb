"""The Hugging Face strategy: blocks of a transformers model, recognised by its `config` (duck typing, never
an import), from its module tree, its config's stage depths and one forward pass."""
# Also the encoder-decoder layout (backbone, decoder, head) that the generic strategy shares.
from __future__ import annotations

__all__ = ['hf_blocks', 'is_hf', 'encoder_layers', 'config_depths', 'units', 'runs',
           'area', 'stage_layers', 'dense_tail', 'same_resolution', 'encoder_decoder_blocks']

import math

from torch import nn

from .blocks import Block, Index, owner, under

ROLES = ('stem', 'body', 'decoder', 'head')


def is_hf(model: nn.Module) -> bool:
    "True for a Hugging Face transformers model: a `config` with a `model_type` and `to_dict`"
    c = getattr(model, 'config', None)
    return (c is not None and isinstance(getattr(c, 'model_type', None), str)
            and callable(getattr(c, 'to_dict', None)))


def config_depths(model: nn.Module) -> list[int]:
    "Blocks per stage as the config says (`depths`, or EfficientNet's scaled `num_block_repeats`); [] if not"
    c = getattr(model, 'config', None)
    d = getattr(c, 'depths', None) or getattr(c, 'depth', None)  # CvT: `depth`
    if isinstance(d, (list, tuple)) and all(isinstance(x, int) for x in d): return list(d)
    reps, coef = getattr(c, 'num_block_repeats', None), getattr(c, 'depth_coefficient', None)
    if isinstance(reps, (list, tuple)) and isinstance(coef, (int, float)):
        return [int(math.ceil(coef * r)) for r in reps]
    return []


def _mats(m: nn.Module) -> int: return sum(p.ndim >= 2 for p in m.parameters())


def encoder_layers(model: nn.Module) -> list[str]:
    """Encoder layers: elements of a container that hold a weight matrix or kernel (two where the container
    mixes classes), the innermost ones holding two or more (a block, not its conv layers), never nested"""
    cands = {}
    for name, c in model.named_modules():
        # a ModuleList of one (a stage of depth 1) is still a list of layers; a Sequential of one a wrapper
        if not isinstance(c, (nn.ModuleList, nn.Sequential)) or len(c) < 2 - isinstance(c, nn.ModuleList):
            continue
        least = 1 if len({type(x) for x in c}) == 1 else 2  # mixed: blocks only (LeViT's residuals)
        cands.update({f'{name}.{i}' if name else str(i): _mats(x) for i, x in enumerate(c)
                      if _mats(x) >= least})
    inner = lambda n: any(k != n and under(k, n) and w >= 2 for k, w in cands.items())
    layers = [n for n in cands if not inner(n)]
    return [n for n in layers if not any(k != n and under(n, k) for k in layers)]


def units(ix: Index, layers: list[str]) -> dict[str, str]:
    "Each parameter's unit: its encoder layer, else the outermost module above it holding no layer"
    out = {}
    for n in ix.weights:
        lay = next((l for l in layers if under(n, l)), None)
        if lay is None:
            parts = n.split('.')
            lay = next(('.'.join(parts[:i]) for i in range(1, len(parts))
                        if not any(under(l, '.'.join(parts[:i])) for l in layers)), n)
        out[n] = lay
    return out


def runs(ix: Index, unit: dict[str, str], layers: set[str]) -> list[Block]:
    "Blocks: runs of parameters of one unit in forward order; `whole` marks an encoder layer's block"
    blocks = []
    for n in ix.sequence:
        u = unit[n]
        if blocks and blocks[-1].modules[0] == u: blocks[-1].params.append(n)
        else: blocks.append(Block([n], [u], 'body', 0, u in layers))
    return blocks


def area(ix: Index, b: Block) -> int | None:
    "Positions (pixels or tokens) of the output of the last layer of block `b` that ran on a feature map"
    tr = ix.trace
    if tr is None: return None
    mods = [owner(p) for p in b.params if owner(p) in tr.size]
    if not mods: return None
    last = max(mods, key=lambda m: tr.rank.get(f'{m}.weight', -1))
    return math.prod(tr.size[last])


def _deep(ix: Index, b: Block) -> bool:
    "An encoder layer holding two or more weight matrices (a block, not a patch embedding's conv)"
    mats = sum(p.endswith('weight') and ix.model.get_parameter(p).ndim >= 2 for p in b.params)
    return b.whole and mats >= 2


def _anchors(ix: Index, blocks: list[Block]) -> list[int]:
    "Positions of the encoder layers among `blocks`, or of the single layers where there are no blocks"
    deep = [i for i, b in enumerate(blocks) if _deep(ix, b)]
    return deep or [i for i, b in enumerate(blocks) if b.whole]


def same_resolution(a: int | None, b: int | None) -> bool:
    "One resolution: equal up to a few tokens (class, distillation or register tokens beside the patches)"
    return a is None or b is None or max(a, b) < 1.2 * min(a, b)


def stage_layers(ix: Index, blocks: list[Block], depths: list[int]) -> list[int]:
    """Stage number (from 1) of each body block: cut where the config's depths say, else one stage per encoder
    layer where all run at one resolution (ViT-like), else where the resolution changes; plain blocks between
    layers start the next stage (a downsample, a patch embedding), those after the last end it"""
    lays, sizes = _anchors(ix, blocks), [area(ix, b) for b in blocks]
    areas = [sizes[i] for i in lays]
    if len(depths) > 1 and sum(depths) == len(lays):
        bounds = {sum(depths[:k]) for k in range(len(depths))}
        cut = [sum(j <= k for j in bounds) - 1 for k in range(len(lays))]
    elif all(same_resolution(a, b) for a in areas for b in areas): cut = list(range(len(lays)))
    else:
        cut, last = [], None
        for a in areas:
            cut.append((cut[-1] if cut else -1) + (not cut or not same_resolution(a, last)))
            last = a or last
    stage, out, last = {i: c + 1 for i, c in zip(lays, cut)}, [], None
    for i in range(len(blocks)):
        nxt = next((j for j in lays if j >= i), None)
        prev = next((j for j in reversed(lays) if j < i), None)
        a = sizes[i]
        if a is None and nxt is not None:  # no layer on a map (a norm): as the next plain block that has one
            a = next((x for x in sizes[i + 1:nxt] if x is not None), None)
        # a plain block at the next layer's resolution (a downsample) starts its stage, else it ends the last;
        # plain blocks after the last layer start a stage where the resolution changes (a U-Net's bottleneck)
        down = nxt is not None and (prev is None or a is None or same_resolution(a, sizes[nxt]))
        out.append(stage[nxt] if down else out[-1] if out else 1)
        if nxt is None and prev is not None and not same_resolution(a, last): out[-1] += 1
        last = a or last
    return out


def _base(model: nn.Module) -> str | None:
    "The base model (backbone) a task model wraps: its `base_model_prefix` child, else `backbone`"
    kids = dict(model.named_children())
    for name in (getattr(model, 'base_model_prefix', None), 'backbone'):
        if isinstance(name, str) and name in kids and is_hf(kids[name]):  # a model of its own, with a config
            total = sum(p.numel() for p in model.parameters())
            if sum(p.numel() for p in kids[name].parameters()) < total: return name
    return None


def dense_tail(ix: Index, blocks: list[Block], end: int) -> None:
    """Roles of the blocks after the backbone (from `end`): those up to the last one on a map larger than the
    backbone's last are the decoder, cut where maps grow; the rest (the output layer, pooled heads): head"""
    if end >= len(blocks): return
    top = next((area(ix, b) for b in reversed(blocks[:end]) if area(ix, b)), None)
    late = set(ix.trace.late) if ix.trace is not None else set()
    tail = blocks[end:]
    grow = [i for i, b in enumerate(tail) if top and (area(ix, b) or 0) > top and not set(b.params) & late]
    aux = lambda b: any(x.lower().startswith('aux') for x in b.modules[0].split('.'))
    last = max((i for i in grow if i < len(tail) - 1 and not aux(tail[i])), default=-1)
    stage, prev = max((b.stage for b in blocks[:end]), default=0), None
    for i, b in enumerate(tail):
        if i <= last and not aux(b):
            a = area(ix, b)
            if prev is None or (a and a > prev): stage += 1
            prev = a or prev
            b.role, b.stage = 'decoder', stage
        else: b.role = 'head'
    for b in tail:
        if b.role == 'head': b.stage = stage + 1


def encoder_decoder_blocks(ix: Index, headless: bool) -> list[Block] | None:
    """Blocks of a model whose maps shrink to a deepest point and grow again to a dense output (a U-Net):
    stages to the deepest point, decoder groups after it, the output layer as head; None for other models"""
    if headless or ix.trace is None or ix.trace.late: return None
    # no repeated blocks (a plain conv autoencoder): its conv and linear layers
    layers = encoder_layers(ix.model) or list(dict.fromkeys(
        owner(n) for n, q in ix.params if n.endswith('weight') and q.ndim >= 2))
    blocks = runs(ix, units(ix, layers), set(layers))
    areas = [area(ix, b) for b in blocks]
    known = [a for a in areas if a]
    if len(known) < 3: return None
    low = min(known)
    deep = max(i for i, a in enumerate(areas) if a and same_resolution(a, low))
    if not any(a and a > 1.2 * low for a in areas[deep + 1:]) or same_resolution(known[0], low): return None
    return _layout(ix, blocks, deep + 1, [], headless)


def _layout(ix: Index, blocks: list[Block], end: int, depths: list[int],
            headless: bool) -> list[Block] | None:
    "Roles and stages of `blocks`: those before the first layer the stem, stages to `end`, decoder and head"
    first = next(iter(_anchors(ix, blocks[:end])), None)
    if first is None: return None
    for b in blocks[:first]: b.role, b.stage = 'stem', 0
    for b, s in zip(blocks[first:end], stage_layers(ix, blocks[first:end], depths)): b.stage = s
    if not headless: dense_tail(ix, blocks, end)
    for b in blocks[end:] if headless else []: b.stage = blocks[end - 1].stage
    return _merge(blocks)


def hf_blocks(ix: Index, headless: bool) -> list[Block] | None:
    "Blocks of a Hugging Face model: embeddings (stem), encoder stages, decoder, head; None for other models"
    model = ix.model
    if not is_hf(model): return None  # without a forward pass: registration order (the plan warns)
    layers = encoder_layers(model)
    if not layers: return None
    blocks = runs(ix, units(ix, layers), set(layers))
    base = _base(model)
    if base and blocks and not under(blocks[0].params[0], base): base = None  # a base model runs first
    inside = lambda b: base is None or under(b.params[0], base)
    end = next((i for i, b in enumerate(blocks) if not inside(b)), len(blocks))
    late = set(ix.trace.late) if ix.trace is not None else set()
    while end and base is None and set(blocks[end - 1].params) <= late: end -= 1
    return _layout(ix, blocks, end, config_depths(model), headless)


def _merge(blocks: list[Block]) -> list[Block]:
    "Plain body blocks joined to the encoder layer that follows them in their stage (the last ones: before)"
    out, pending = [], []
    fits = lambda a, b: a.stage == b.stage and a.role == b.role
    for b in blocks:
        if b.role == 'body' and not b.whole:
            pending.append(b)
            continue
        join = [x for x in pending if b.whole and fits(x, b)]  # those of its stage (a downsample)
        _close(out, [x for x in pending if x not in join])  # the rest end the stage before
        if join: b.params, b.modules = [p for x in join for p in x.params] + b.params, _mods(join + [b])
        pending = []
        out.append(b)
    _close(out, pending)
    return out


def _close(out: list[Block], pending: list[Block]) -> None:
    "Plain blocks ending a stage: into the encoder layer before them in that stage, else blocks of their own"
    for b in pending:
        if out and out[-1].whole and out[-1].stage == b.stage and out[-1].role == b.role:
            out[-1].params, out[-1].modules = out[-1].params + b.params, _mods([out[-1], b])
        else: out.append(b)


def _mods(blocks: list[Block]) -> list[str]: return list(dict.fromkeys(m for b in blocks for m in b.modules))
