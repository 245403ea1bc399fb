("Sweep `split_stages` and `split_n(m, 4)` over every registry model built on meta: "
 "partition, forward order, groups, balance, time.")
from __future__ import annotations

__all__ = ['Row', 'arch_names', 'sweep_one', 'sweep', 'summary', 'render', 'main']

import argparse, multiprocessing as mp, os, pathlib, sys, time, warnings
from dataclasses import dataclass

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

RESULTS = pathlib.Path(__file__).parent / 'results' / 'split_registry.md'
SEEDS = ['Plain18Layer', 'Plain28Layer', 'SimpleCNN', 'AlexNet', 'ResNet18', 'VGG', 'Inception',
         'NewInception', 'AsymInception', 'InceptionModule', 'ResBlk']
SEED_ARGS = {'Inception': (3, 32), 'NewInception': (3, 32), 'AsymInception': (3, 32),
             'InceptionModule': (3, 32), 'ResBlk': (16, 32)}
SEED_INPUT = {'ResNet18': (1, 3, 32, 32), 'ResBlk': (1, 16, 32, 32)}


@dataclass
class Row:
    "One model of the sweep: how it was built, its two splits and their checks, and the times taken"
    name: str
    source: str
    build_s: float = 0.
    split_s: float = 0.
    order_s: float = 0.
    trace_s: float = 0.     # the forward pass on meta inside the split (part of split_s)
    strategy: str = ''
    n_stages: int = 0
    n4: int = 0
    n4_max_pct: float = 0.
    stages_max_pct: float = 0.
    partition: bool = False
    order: str = ''         # 'ok' | 'fail' | 'skip'
    order_note: str = ''
    error: str = ''
    meta: bool = True
    built: bool = False
    traced: bool = False    # the split's own forward pass ran (else registration order, with a warning)
    stem_pct: float = 0.
    norm_split: str = ''    # first norm found apart from its layer (either split)
    res_defined: bool = False
    res_over: str = ''      # first body group spanning more than one resolution change


def arch_names(limit: int | None = None) -> list[str]:
    "Every timm model, every torchvision classifier, fastai's xresnets and the seed models, as `source:name`"
    import timm, torchvision
    from fast_impl.archs import known_names
    names = [f'timm:{n}' for n in timm.list_models()]
    names += [f'torchvision:{n}' for n in torchvision.models.list_models(module=torchvision.models)]
    names += known_names('fastai') + [f'fast_impl:{n}' for n in SEEDS]
    return names[:limit] if limit else names


def _build(name: str):
    from fast_impl import models
    from fast_impl.archs import resolve
    src, _, bare = name.partition(':')
    if src == 'fast_impl' and bare in SEED_ARGS:
        import torch
        with torch.device('meta'): return getattr(models, bare)(*SEED_ARGS[bare])
    return resolve(name)


def _pcts(groups) -> list[float]:
    sizes = [sum(p.numel() for p in g) for g in groups]
    return [100 * x / (sum(sizes) or 1) for x in sizes]


def _pct(groups) -> float: return max(_pcts(groups))


def _order(row: Row, m, gs, g4, name: str):
    "Forward-order check of both splits on meta (a CPU-built model is moved to meta first)"
    from fast_impl.split import first_use_order, order_violations
    t = time.perf_counter()
    try:
        if not all(p.is_meta for p in m.parameters()): m = m.to('meta')
        order = first_use_order(m, SEED_INPUT.get(name.partition(':')[2]))
    except Exception as e:
        row.order, row.order_note = 'skip', (f'forward on meta failed: {type(e).__name__}: '
                                             f'{str(e).splitlines()[0][:100]}')
        return
    finally: row.order_s = time.perf_counter() - t
    bad = order_violations(m, gs, order) + order_violations(m, g4, order)
    row.order, row.order_note = ('fail', bad[0][:160]) if bad else ('ok', '')


def _timed_trace():
    "Wrap the split's forward pass to time it (a benchmark-only hook); returns the list the times go to"
    import fast_impl.forward as T
    times, inner = [], T.trace
    def trace(*a, **k):
        t = time.perf_counter()
        try: return inner(*a, **k)
        finally: times.append(time.perf_counter() - t)
    T.trace = trace
    return times


def _checks(row: Row, p, gs, g4):
    "The rules' invariants: norms with their layers, body groups within one resolution change, stem size"
    from fast_impl.split.check import body_resolutions, group_names, norm_splits
    names = [group_names(p.model, g) for g in (gs, g4)]
    bad = norm_splits(p, names[0]) + norm_splits(p, names[1])
    row.norm_split = bad[0][:160] if bad else ''
    res = body_resolutions(p, names[0])
    row.res_defined = any(res)
    over = [f'group {i + 1}: ' + ' -> '.join(map(str, rs))
            for i, rs in enumerate(res) if len(rs) > 2]
    # a group's list: the positions it takes, then each new output positions of its blocks (3+: two changes)
    row.res_over = over[0][:160] if over else ''
    row.stem_pct = _pcts(gs)[0]


def sweep_one(name: str, order: bool = True) -> Row:
    "Build `name` on meta, split it both ways, check partition, the rules and (when `order`) forward order"
    warnings.simplefilter('ignore')
    from fast_impl.split import check_groups, plan, split_n, split_stages
    row, times = Row(name, name.partition(':')[0]), _timed_trace()
    try:
        t = time.perf_counter(); m = _build(name); row.build_s = time.perf_counter() - t
        row.built = True
        row.meta = all(p.is_meta for p in m.parameters())
        t = time.perf_counter(); p = plan(m); gs = split_stages(p); g4 = split_n(p, 4)
        row.split_s = time.perf_counter() - t
        row.trace_s, row.traced, row.strategy = sum(times), p.index.trace is not None, p.strategy
        check_groups(m, gs); check_groups(m, g4)
        row.partition = True
        row.n_stages, row.n4, row.stages_max_pct, row.n4_max_pct = len(gs), len(g4), _pct(gs), _pct(g4)
        _checks(row, p, gs, g4)
        if order: _order(row, m, gs, g4, name)
    except Exception as e:
        row.error = f'{type(e).__name__}: {str(e).splitlines()[0][:160]}' if str(e) else type(e).__name__
    return row


def _init():
    import torch
    torch.set_num_threads(1)


def sweep(names: list[str], procs: int = 2, order: bool = True) -> tuple[list[Row], float]:
    "Run `sweep_one` over `names` in a `procs`-process pool, with a progress bar; returns rows and wall time"
    from fastprogress.fastprogress import progress_bar
    t, rows = time.perf_counter(), []
    ctx = mp.get_context('fork')
    with ctx.Pool(procs, initializer=_init, maxtasksperchild=200) as pool:
        jobs = pool.imap_unordered(_sweep_job, [(n, order) for n in names], chunksize=4)
        for r in progress_bar(jobs, total=len(names)): rows.append(r)
    at = {n: i for i, n in enumerate(names)}
    return sorted(rows, key=lambda r: at[r.name]), time.perf_counter() - t


def _sweep_job(args) -> Row: return sweep_one(*args)


def summary(rows: list[Row], wall: float, procs: int) -> list[tuple[str, str, str, bool]]:
    "The headline figures against the issue's targets: (what, figure, target, met)"
    rows = [r for r in rows if r.built]  # a model its own registry cannot build is no split failure
    n, ok = len(rows), [r for r in rows if not r.error]
    part = sum(r.partition for r in rows)
    checked = [r for r in ok if r.order in ('ok', 'fail')]
    order_ok = sum(r.order == 'ok' for r in checked)
    three = sum(r.n_stages >= 3 for r in ok)
    four = sum(r.n4 == 4 and r.n4_max_pct <= 50 for r in ok)
    build, split, fwd = (sum(getattr(r, k) for r in rows) for k in ('build_s', 'split_s', 'trace_s'))
    res = [r for r in ok if r.res_defined]
    norm_bad, res_bad, stem_big = (sum(bool(c(r)) for r in pool) for c, pool in
                                   [(lambda r: r.norm_split, ok), (lambda r: r.res_over, res),
                                    (lambda r: r.stem_pct > 10, ok)])
    shares = sorted(r.stages_max_pct for r in ok)
    pct = lambda a, b: f'{a}/{b} = {100 * a / max(b, 1):.1f}%'
    return [('partition (every parameter exactly once, both splits)', pct(part, n), '100%', part == n),
            ('forward order (both splits; models that run on meta)', pct(order_ok, len(checked)), '>= 98%',
             order_ok >= .98 * len(checked)),
            ('split_stages gives 3+ groups', pct(three, n), '>= 95%', three >= .95 * n),
            ('split_n(m, 4): 4 groups, none over 50%', pct(four, n), '>= 90%', four >= .9 * n),
            ("the split's own forward pass ran (else registration order, warned)",
             pct(sum(r.traced for r in ok), len(ok)), '-', True),
            ('norm apart from its layer (either split)', pct(norm_bad, len(ok)), '0 models', norm_bad == 0),
            ('body group spanning more than one resolution change (models with convolutions)',
             pct(res_bad, len(res)), '< 2%', res_bad < .02 * len(res)),
            ('stem group over 10% of the parameters', pct(stem_big, len(ok)), '< 1%',
             stem_big < .01 * len(ok)),
            ("largest split_stages group's share: median / 90th percentile / max",
             (' / '.join(f'{shares[int(q * (len(shares) - 1))]:.0f}%' for q in (.5, .9, 1))
              if shares else '-'), '-', True),
            (f'whole sweep, {procs} processes', f'{wall / 60:.1f} min', '<= 10 min', wall <= 600),
            ('splitting time / build time (with the forward pass)',
             f'{split:.1f} s / {build:.1f} s = {100 * split / max(build, 1e-9):.1f}%',
             '<= 10%', split <= .1 * build),
            ('  of which the forward pass on meta',
             f'{fwd:.1f} s = {100 * fwd / max(build, 1e-9):.1f}% of build', '-', True),
            ('  splitting without it',
             f'{split - fwd:.1f} s = {100 * (split - fwd) / max(build, 1e-9):.1f}% of build',
             '<= 10%', split - fwd <= .1 * build)]


def _names(rows: list[Row], cond, note=lambda r: '') -> str:
    hit = [r for r in rows if cond(r)]
    if not hit: return 'none\n'
    return '\n'.join(f'- `{r.name}`' + (f': {note(r)}' if note(r) else '') for r in hit) + '\n'


def render(rows: list[Row], wall: float, procs: int) -> str:
    "The markdown report: summary vs targets, strategies used, then every failure by name"
    import collections
    ok = [r for r in rows if not r.error]
    lines = ['# Split registry sweep', '',
             f'`python bench/split_registry.py` on {os.cpu_count()} CPU cores, {procs} worker processes, '
             f'every model built on the meta device (CPU where it cannot be; those are moved to meta for the '
             f'order check). {len(rows)} models ({sum(r.built for r in rows)} build): '
             + ', '.join(f'{k} {v}' for k, v in collections.Counter(r.source for r in rows).items()) + '.',
             '', '| figure | result | target | met |', '| --- | ---: | ---: | :---: |']
    lines += [f'| {a} | {b} | {c} | {"yes" if d else "**no**"} |'
              for a, b, c, d in summary(rows, wall, procs)]
    strat = collections.Counter(r.strategy for r in ok)
    lines += ['', 'Strategy used by `split_stages`: '
              + ', '.join(f'{k} {v}' for k, v in strat.most_common()) + '.',
              f'Order checked on {sum(r.order in ("ok", "fail") for r in ok)} models; skipped on '
              f'{sum(r.order == "skip" for r in ok)} (forward pass cannot run on meta). '
              f'Built on the CPU (meta impossible): {sum(not r.meta for r in ok)}.', '']
    return '\n'.join(lines + _failures(rows, ok))


def _failures(rows: list[Row], ok: list[Row]) -> list[str]:
    "The report's sections naming each model that misses a figure"
    lines = ['## Models that do not build (left out of every figure)', '',
             _names(rows, lambda r: not r.built, lambda r: r.error)]
    lines += ['## Split errors', '', _names(rows, lambda r: r.built and r.error, lambda r: r.error)]
    lines += ['## Partition failures', '', _names(ok, lambda r: not r.partition)]
    lines += ['## Forward-order failures (first violation)', '',
              _names(ok, lambda r: r.order == 'fail', lambda r: r.order_note)]
    lines += ['## split_stages with fewer than 3 groups', '',
              _names(ok, lambda r: r.n_stages < 3, lambda r: f'{r.n_stages} groups')]
    lines += ['## split_n(m, 4) not 4 groups, or a group over 50%', '',
              _names(ok, lambda r: r.n4 != 4 or r.n4_max_pct > 50,
                     lambda r: f'{r.n4} groups, largest {r.n4_max_pct:.0f}%')]
    lines += ['## Order check skipped', '', _names(ok, lambda r: r.order == 'skip', lambda r: r.order_note)]
    lines += ["## No forward pass in the split (registration order, warned)", '',
              _names(ok, lambda r: not r.traced)]
    lines += ['## Norm apart from its layer', '', _names(ok, lambda r: r.norm_split, lambda r: r.norm_split)]
    lines += ['## Body group spanning more than one resolution change', '',
              _names(ok, lambda r: r.res_over, lambda r: r.res_over)]
    lines += ['## Stem group over 10% of the parameters', '',
              _names(ok, lambda r: r.stem_pct > 10, lambda r: f'{r.stem_pct:.0f}%')]
    lines += ["## Largest split_stages group over 60%", '',
              _names(ok, lambda r: r.stages_max_pct > 60,
                     lambda r: f'{r.n_stages} groups, largest {r.stages_max_pct:.0f}%')]
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--limit', type=int, help='only the first N models (a quick look)')
    ap.add_argument('--procs', type=int, default=2)
    ap.add_argument('--no-order', action='store_true', help='skip the forward-order check')
    ap.add_argument('--out', default=str(RESULTS))
    a = ap.parse_args(argv)
    names = arch_names(a.limit)
    rows, wall = sweep(names, a.procs, not a.no_order)
    text = render(rows, wall, a.procs)
    pathlib.Path(a.out).write_text(text + '\n')
    print('\n'.join(f'{w}: {f} (target {t})' for w, f, t, _ in summary(rows, wall, a.procs)))


if __name__ == '__main__':
    main()
