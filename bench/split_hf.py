("Sweep split_stages / split_blocks / param_groups over the Hugging Face transformers vision classes, "
 "each built from its default config on meta: partition, forward order, rules, stage count vs the config.")
from __future__ import annotations

__all__ = ['Row', 'hf_names', 'sweep_one', 'sweep', 'summary', 'render', 'main']

import argparse, multiprocessing as mp, os, pathlib, signal, sys, time, warnings
from dataclasses import dataclass

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault('HF_HUB_OFFLINE', '1')

RESULTS = pathlib.Path(__file__).parent / 'results' / 'split_hf.md'
KINDS = {'classification': 'MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES',
         'base': 'MODEL_FOR_IMAGE_MAPPING_NAMES',
         'segmentation': 'MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES',
         'depth': 'MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES',
         'detection': 'MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES'}
# not one-image vision models: vision-language, video, text-token inputs, a timm wrapper (timm's own sweep)
SKIP = {'cohere2_vision', 'llama4', 'mllama', 'shieldgemma2', 'timesformer', 'videomae', 'vivit',
        'videoprism_vision_model', 'imagegpt', 'timm_wrapper', 'timm_backbone', 'perceiver'}


@dataclass
class Row:
    "One transformers class of the sweep: its splits, the rule checks, the stage count against its config"
    name: str
    kind: str
    family: str = ''        # 'hierarchical' | 'vit' | 'other' (from the config)
    built: bool = False
    error: str = ''
    strategy: str = ''
    traced: bool = False
    n_stages: int = 0
    n_blocks: int = 0
    stage_names: str = ''
    want: int = 0           # stages the config says (0: it says nothing)
    got: int = 0            # body stages split_stages gave (stem, decoder, head left out)
    partition: bool = False
    order: str = ''
    norm_split: str = ''
    layer_cut: str = ''
    res_over: str = ''
    head_differs: str = ''  # the head is not the same set under stages and blocks
    stem_pct: float = 0.
    max_pct: float = 0.
    wd_on_tokens: str = ''  # a token / position / layer-scale parameter param_groups gives weight decay
    seconds: float = 0.


def hf_names() -> list[tuple[str, str, str]]:
    "(kind, model_type, class name) of every one-image vision class of the installed transformers"
    from transformers.models.auto import modeling_auto as ma
    out, seen = [], set()
    for kind, table in KINDS.items():
        for mtype, names in getattr(ma, table).items():
            for n in ([names] if isinstance(names, str) else names):
                if mtype in SKIP or n in seen: continue
                seen.add(n)
                out.append((kind, mtype, n))
    return out


def build(mtype: str, name: str):
    "The class `name` from the default config of `mtype`, on meta (no download: pretrained backbones off)"
    import torch, transformers
    from transformers import CONFIG_MAPPING
    cfg = CONFIG_MAPPING[mtype]()
    for k in ('use_pretrained_backbone', 'use_timm_backbone'):
        if hasattr(cfg, k): setattr(cfg, k, False)
    with torch.device('meta'): return getattr(transformers, name)(cfg)


def config_stages(m) -> tuple[str, int]:
    "('hierarchical', stages) or ('vit', layers) as the config says, ('other', 0) where it says neither"
    c = getattr(m, 'config', None)
    c = getattr(c, 'backbone_config', None) or getattr(c, 'vision_config', None) or c
    for k in ('depths', 'depth', 'num_block_repeats', 'stage_depths', 'num_encoder_blocks', 'num_stages'):
        v = getattr(c, k, None)
        if isinstance(v, (list, tuple)) and len(v) > 1: return 'hierarchical', len(v)
        if isinstance(v, int) and v > 1 and k != 'num_block_repeats': return 'hierarchical', v
    n = getattr(c, 'num_hidden_layers', None)
    if isinstance(n, int) and n > 0 and getattr(c, 'patch_size', None): return 'vit', n
    return 'other', 0


def _layers(m) -> list[str]:
    "Encoder layers: elements (holding 2+ weight matrices) of a repeated container, the innermost such"
    from torch import nn
    mats = lambda x: sum(p.ndim >= 2 for p in x.parameters())
    out = []
    for name, c in m.named_modules():
        if not isinstance(c, (nn.ModuleList, nn.Sequential)) or len(c) < 2: continue
        least = 1 if len({type(x) for x in c}) == 1 else 2  # a mixed container: its blocks
        out += [f'{name}.{i}' for i, x in enumerate(c) if mats(x) >= max(least, 2)]
    return [n for n in out if not any(o != n and o.startswith(n + '.') for o in out)]


def _cut(m, names: list[list[str]]) -> str:
    "The first encoder layer whose parameters span two groups"
    where = {n: i for i, g in enumerate(names) for n in g}
    for layer in _layers(m):
        gs = {where[n] for n in where if n.startswith(layer + '.')}
        if len(gs) > 1: return f'{layer} in groups {sorted(gs)}'
    return ''


def _changes(sizes: list[int]) -> list[int]:
    "The resolutions (positions: 56x56 map = 3136 tokens) that change; a class or register token not counted"
    out = []
    for a in sizes:
        if not out or not (a < 1.2 * out[-1] and out[-1] < 1.2 * a): out.append(a)
    return out


def _timeout(*_): raise TimeoutError('over the time limit')


def sweep_one(item: tuple[str, str, str], limit: int = 120) -> Row:
    "Build one class on meta, split it, check every invariant; an error is recorded, never raised"
    warnings.simplefilter('ignore')
    kind, mtype, name = item
    row, t = Row(name, kind), time.perf_counter()
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(limit)
    try:
        m = build(mtype, name)
        row.built = True
        row.family, row.want = config_stages(m)
        # a detector's config gives its backbone's stages; its body also holds the detection transformer
        if kind == 'detection' and row.family == 'hierarchical': row.family = 'detector'
        _split(row, m)
    except Exception as e:
        row.error = f'{type(e).__name__}: {str(e).splitlines()[0][:150]}' if str(e) else type(e).__name__
    finally:
        signal.alarm(0)
        row.seconds = time.perf_counter() - t
    return row


def _split(row: Row, m) -> None:
    "The splits of `m` and their checks, into `row`"
    from fast_impl.optim import param_groups
    from fast_impl.split import check_groups, group_names, plan
    from fast_impl.split.check import body_resolutions, name_violations, norm_splits
    from fast_impl.layers import is_norm
    from fast_impl.split.groups import named_blocks, named_stages
    p = plan(m)
    row.strategy, row.traced = p.strategy, p.index.trace is not None
    st, bl = named_stages(p), named_blocks(p)
    gs, gb = [g for _, g in st], [g for _, g in bl]
    check_groups(m, gs); check_groups(m, gb)
    row.partition = True
    ns, nb = group_names(m, gs), group_names(m, gb)
    row.n_stages = len(gs)
    row.stage_names = ' '.join(n.replace('stage ', 's') for n, _ in st)
    row.got = sum(n.startswith('stage') for n, _ in st)
    if row.traced:
        bad = name_violations(ns, p.index.trace.order) + name_violations(nb, p.index.trace.order)
        row.order = bad[0][:150] if bad else 'ok'
        bad = norm_splits(p, ns) + norm_splits(p, nb)
        row.norm_split = bad[0][:150] if bad else ''
        # stages only: decoders run on maps that shrink and grow by design
        over = [st[i + 1][0] for i, rs in enumerate(body_resolutions(p, ns))
                if len(_changes(rs)) > 2 and st[i + 1][0].startswith('stage')]
        row.res_over = over[0] if over else ''
    row.layer_cut = _cut(m, ns) or _cut(m, nb)
    row.n_blocks = sum(n.startswith('block') for n, _ in bl)
    # the final norm joins the head under blocks by design (BEiT-style layer decay): norms left out
    mods = dict(m.named_modules())
    names = lambda g: {n for n in g if not is_norm(mods[n.rpartition('.')[0]])}
    if st[-1][0] == 'head' and bl[-1][0] == 'head' and names(ns[-1]) != names(nb[-1]):
        row.head_differs = f'{sorted(names(ns[-1]) ^ names(nb[-1]))[0]} in one head only'
    sizes = [sum(q.numel() for q in g) for g in gs]
    row.stem_pct = 100 * sizes[0] / sum(sizes) if st[0][0] == 'stem' else 0.
    row.max_pct = 100 * max(sizes) / sum(sizes)
    row.wd_on_tokens = _wd_tokens(m, param_groups(m, 1e-3, wd=0.05))  # a Plan: issue 19 item 3


def _wd_tokens(m, groups: list[dict]) -> str:
    "The first token, position embedding or layer scale that gets weight decay"
    import re
    rx = re.compile(r'(_tokens?$|^tokens?$|position|pos_embed|bias_table|lambda_|layer_scale|layerscale)')
    decayed = {id(q) for g in groups if g['weight_decay'] > 0 for q in g['params']}
    return next((n for n, q in m.named_parameters() if id(q) in decayed and rx.search(n)), '')


def _init():
    import torch
    torch.set_num_threads(1)


def sweep(items, procs: int = 1, limit: int = 120) -> tuple[list[Row], float]:
    "`sweep_one` over `items` in a pool of `procs` processes (one torch thread each); rows and wall time"
    t, ctx = time.perf_counter(), mp.get_context('fork')
    with ctx.Pool(procs, initializer=_init, maxtasksperchild=20) as pool:
        rows = pool.starmap(sweep_one, [(it, limit) for it in items], chunksize=1)
    return rows, time.perf_counter() - t


def _ok(r: Row) -> bool: return r.built and not r.error


def summary(rows: list[Row]) -> list[tuple[str, str, str, bool]]:
    "The headline figures against the issue's targets: (what, figure, target, met)"
    ok = [r for r in rows if _ok(r)]
    traced = [r for r in ok if r.traced]
    hier = [r for r in ok if r.family == 'hierarchical']
    pct = lambda a, b: f'{a}/{b} = {100 * a / max(b, 1):.1f}%'
    count = lambda pool, c: sum(bool(c(r)) for r in pool)
    part, order = count(ok, lambda r: r.partition), count(traced, lambda r: r.order == 'ok')
    cut, norm = count(ok, lambda r: r.layer_cut), count(traced, lambda r: r.norm_split)
    stages = count(hier, lambda r: r.got == r.want)
    vit = [r for r in ok if r.family == 'vit']
    return [('split without error (built classes)', pct(len(ok), sum(r.built for r in rows)), '100%',
             len(ok) == sum(r.built for r in rows)),
            ('partition (stages and blocks)', pct(part, len(ok)), '100%', part == len(ok)),
            ("forward order (the split's own pass ran)", pct(order, len(traced)), '100%',
             order == len(traced)),
            ('forward pass ran in the split', pct(len(traced), len(ok)), '-', True),
            ('encoder layer cut across groups', pct(cut, len(ok)), '0', cut == 0),
            ('norm apart from its layer', pct(norm, len(traced)), '0', norm == 0),
            ('body group over one resolution change', pct(count(traced, lambda r: r.res_over), len(traced)),
             '0', not any(r.res_over for r in traced)),
            ('head differs between stages and blocks', pct(count(ok, lambda r: r.head_differs), len(ok)),
             '0', not any(r.head_differs for r in ok)),
            ('stem over 10%', pct(count(ok, lambda r: r.stem_pct > 10), len(ok)), '-', True),
            ('token / position / layer scale with weight decay',
             pct(count(ok, lambda r: r.wd_on_tokens), len(ok)), '0', not any(r.wd_on_tokens for r in ok)),
            ('hierarchical: stages == config', pct(stages, len(hier)), '>= 95%', stages >= .95 * len(hier)),
            ('ViT-like: stages == config layers (one per encoder layer)',
             pct(count(vit, lambda r: r.got == r.want), len(vit)), '-', True)]


NOTES = """How: each class is built from its default config on the meta device (no download, no
weights), split by `split_stages` and `split_blocks` (one forward pass of a meta copy, sized from the
config's `image_size`), and `param_groups(m, 1e-3, wd=0.05)`. An encoder layer is an item of a module list
holding two or more weight matrices (the innermost such); it must sit in one group under both splits.
Resolutions are compared as positions (a 56x56 map = 3136 tokens; a class or register token is not a
change); decoder groups are exempt (they read several scales by design). The head is compared between the
splits without norms (the final norm joins the head under `split_blocks`, BEiT-style). Hierarchical: the
config states stage depths (`depths`, EfficientNet's `num_block_repeats`, ...); detectors are left out of
that count (their body also holds the detection transformer). ViT-like: the config states
`num_hidden_layers` and a `patch_size`."""

# why each exception the sweep lists happens: (class-name pattern, what, why)
EXPLAINED = [
    (r'^Dinat', 'build', 'needs the `natten` package (not installed)'),
    (r'^BeitForSemanticSegmentation', 'build',
     'its default config has no `out_indices` (the class refuses it)'),
    (r'^(Sapiens2|PPOCRV5Server|PPOCRV6Medium)', 'build', 'the default config names no backbone config'),
    (r'^LwDetr', 'pass', 'its forward pass makes a CPU tensor (anchors) that meets the meta ones; '
     'registration order (warned), encoder layers still whole'),
    (r'^PPDocLayoutV2', 'pass', 'its reading-order step indexes a data-dependent 0-d tensor, which fails on '
     'meta; registration order (warned), encoder layers still whole'),
    (r'^PPOCRV6SmallDet', 'pass', 'at 224x224 a channel check in its neck fails and the config states no '
     'input size; `plan(m, input_size=...)` with its own size traces it'),
    (r'^RfDetr', 'pass', "its windowed DINOv2 backbone needs a side divisible by patch x windows; the "
     "config's 518 is not; registration order (warned), encoder layers still whole"),
    (r'(Detr|TableTransformer|DFine|Deimv2|RTDetr)', 'pass',
     'the forward pass calls `.item()` (masks, anchors) which meta tensors cannot; the split follows '
     'registration order (warned), encoder layers still whole'),
    (r'^Siglip2', 'pass', 'takes patchified pixels with `pixel_attention_mask` and `spatial_shapes`, and '
     'even given them (`input_data=`) its embeddings resize the position embeddings with `.item()`, which '
     'meta tensors cannot; registration order (warned), encoder layers still whole'),
    (r'^DepthPro', 'pass', 'runs on 1536x1536 inputs that its config does not state as `image_size`; '
     '`plan(m, input_size=(1, 3, 1536, 1536))` traces it'),
    (r'(DeformableDetr|PPDocLayout|PPOCRV5Mobile|RTDetr)', 'res',
     "a detector's base model holds its multi-scale neck (FPN/PAN, hybrid encoder) beside the backbone; "
     "those stages read several resolutions at once"),
]


def _why(name: str, what: str) -> str:
    import re
    return next((why for rx, w, why in EXPLAINED if w == what and re.search(rx, name)), '**unexplained**')


def _list(rows: list[Row], cond, note) -> str:
    hit = [r for r in rows if cond(r)]
    return '\n'.join(f'- `{r.name}`: {note(r)}' for r in hit) + '\n' if hit else 'none\n'


def render(rows: list[Row], wall: float, procs: int) -> str:
    "The markdown report: figures against targets, one line per class, every failure by name"
    ok = [r for r in rows if _ok(r)]
    import transformers
    lines = ['# Hugging Face transformers vision classes: layer groups', '',
             f'`python bench/split_hf.py`: transformers {transformers.__version__}, {len(rows)} classes '
             f'({sum(r.built for r in rows)} build on meta from the default config), {procs} process(es), '
             f'{wall / 60:.1f} min.', '', '| figure | result | target | met |',
             '| --- | ---: | ---: | :---: |']
    lines += [f'| {a} | {b} | {c} | {"yes" if d else "**no**"} |' for a, b, c, d in summary(rows)]
    lines += ['', NOTES]
    lines += ['', '## Every class', '',
              '| class | kind | family | config | stages | blocks | groups (stages) '
              '| stem % | max % |', '| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: |']
    lines += [f'| {r.name} | {r.kind} | {r.family} | {r.want or "-"} | {r.got} | {r.n_blocks} | '
              f'{r.stage_names} | {r.stem_pct:.1f} | {r.max_pct:.0f} |' for r in ok]
    checks = [('Do not build on meta', rows, lambda r: not r.built,
               lambda r: f'{r.error[:90]}; {_why(r.name, "build")}'),
              ('Split errors', rows, lambda r: r.built and r.error, lambda r: r.error),
              ('Forward order broken', ok, lambda r: r.traced and r.order != 'ok', lambda r: r.order),
              ('No forward pass in the split', ok, lambda r: not r.traced,
               lambda r: f'{r.strategy}: {_why(r.name, "pass")}'),
              ('Encoder layer cut', ok, lambda r: r.layer_cut, lambda r: r.layer_cut),
              ('Norm apart from its layer', ok, lambda r: r.norm_split,
               lambda r: f'{r.norm_split}; {_why(r.name, "norm")}'),
              ('Body group over one resolution change', ok, lambda r: r.res_over,
               lambda r: f'{r.res_over}; {_why(r.name, "res")}'),
              ('Head differs between stages and blocks', ok, lambda r: r.head_differs,
               lambda r: r.head_differs),
              ('Weight decay on tokens / positions / layer scales', ok, lambda r: r.wd_on_tokens,
               lambda r: r.wd_on_tokens),
              ('Hierarchical: stage count differs from the config', ok,
               lambda r: r.family == 'hierarchical' and r.got != r.want,
               lambda r: f'{r.got} stages, config {r.want}: {r.stage_names}'),
              ('Stem over 10%', ok, lambda r: r.stem_pct > 10, lambda r: f'{r.stem_pct:.0f}%')]
    for title, pool, cond, note in checks: lines += [f'## {title}', '', _list(pool, cond, note)]
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--only', nargs='*', help='class names (a quick look)')
    ap.add_argument('--procs', type=int, default=1)
    ap.add_argument('--limit', type=int, default=120, help='seconds per class')
    ap.add_argument('--out', default=str(RESULTS))
    a = ap.parse_args(argv)
    items = [it for it in hf_names() if not a.only or it[2] in a.only]
    rows, wall = sweep(items, a.procs, a.limit)
    pathlib.Path(a.out).write_text(render(rows, wall, a.procs) + '\n')
    print('\n'.join(f'{w}: {f} (target {t})' for w, f, t, _ in summary(rows)))
    for r in rows:
        flags = [k for k in ('error', 'layer_cut', 'norm_split', 'res_over', 'head_differs', 'wd_on_tokens')
                 if getattr(r, k)] + (['order'] if r.traced and r.order != 'ok' else [])
        if r.family == 'hierarchical' and r.got != r.want: flags.append(f'stages {r.got}/{r.want}')
        print(f'{r.name:50s} {r.family[:4]:4s} {r.stage_names[:60]:60s} {" ".join(flags)}')


if __name__ == '__main__':
    main()
