"""Benchmark `layer_summary` against torchinfo's `summary` (default device, and the meta device).

Each (tool, model) runs in a fresh process, which imports everything first and then measures: wall time of
building the model and summarising it, and peak RSS above the process's peak after the imports. Total
mult-adds are compared with `FlopCounterMode` on meta (FLOPs / 2) plus one per bias element of every conv and
linear module call. Writes bench/results/summary.md.

    python bench/summary_bench.py              # the full run (vit_giant under torchinfo takes about a minute)
    python bench/summary_bench.py --models resnet50 --out /tmp/x.md
"""
from __future__ import annotations

import argparse, json, os, pathlib, platform, statistics, subprocess, sys, time

HERE = pathlib.Path(__file__).resolve().parent
MODELS = {  # name -> (source, size for the text)
    'resnet50': 'torchvision', 'efficientnet_b0': 'torchvision', 'convnext_base': 'timm',
    'vit_base_patch16_224': 'timm', 'vit_giant_patch14_224': 'timm'}
TOOLS = ['layer_summary', 'torchinfo', 'torchinfo_meta', 'flop_counter']
SIZE = (1, 3, 224, 224)
COLS = ('kernel_size', 'output_size', 'num_params', 'mult_adds')


def _peak_mb() -> float:
    "Peak resident set size of this process so far (VmHWM), in MB"
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'): return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(name: str, device: str):
    import timm, torch, torchvision
    with torch.device(device):
        if MODELS[name] == 'timm': return timm.create_model(name)
        return torchvision.models.get_model(name)


def _reference(model) -> int:
    "FlopCounterMode / 2 on meta, plus one per bias element added by conv/linear module calls"
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode
    bias = []
    hook = lambda m, i, o: bias.append(o.numel()) if getattr(m, 'bias', None) is not None else None
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)): m.register_forward_hook(hook)
    with FlopCounterMode(display=False) as f, torch.no_grad(): model.eval()(torch.randn(SIZE, device='meta'))
    return f.get_total_flops() // 2 + sum(bias)


def _run_tool(tool: str, name: str) -> tuple[int, int]:
    "Build `name` and summarise it with `tool`: (total mult-adds, parameters)"
    from torchinfo import summary
    from fast_impl.summary import layer_summary
    if tool == 'layer_summary':
        s = layer_summary(f'{MODELS[name]}:{name}', input_size=SIZE, depth=3)
        return s.total_mult_adds, s.total_params
    if tool == 'flop_counter':
        m = _build(name, 'meta')
        return _reference(m), sum(p.numel() for p in m.parameters())
    device = 'meta' if tool == 'torchinfo_meta' else 'cpu'
    s = summary(_build(name, device), input_size=SIZE, depth=3, col_names=COLS, device=device, verbose=0)
    return s.total_mult_adds, s.total_params


def worker(tool: str, name: str) -> dict:
    "Run one measurement in this (fresh) process"
    # imports are done before the clock and the RSS baseline start (the same imports for every tool)
    import timm, torch, torchvision, torchinfo, fast_impl.summary  # noqa: F401
    torch.set_num_threads(os.cpu_count() or 1)
    base = _peak_mb()
    t = time.perf_counter()
    macs, params = _run_tool(tool, name)
    return dict(tool=tool, model=name, wall_s=time.perf_counter() - t, rss_mb=_peak_mb() - base, base_mb=base,
                macs=macs, params=params)


def measure(tool: str, name: str) -> dict:
    "Run `worker(tool, name)` in a fresh Python process and return its record"
    cmd = [sys.executable, __file__, '--worker', tool, name]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    if r.returncode: return dict(tool=tool, model=name, error=(r.stderr.strip().splitlines() or ['?'])[-1])
    return json.loads(r.stdout.strip().splitlines()[-1])


def _machine() -> str:
    import torch, torchinfo, timm, torchvision
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')
    mem = next((int(l.split()[1]) // 1024 ** 2 for l in open('/proc/meminfo') if l.startswith('MemTotal')),
               '?')
    return (f'{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem} GB RAM; Python '
            f'{platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, '
            f'timm {timm.__version__}, torchinfo {torchinfo.__version__}')


def _g(n) -> str: return f'{n / 1e9:.3f}G'


def _model_rows(name: str, res: dict) -> list[str]:
    ref = res['flop_counter'].get('macs')
    rows = []
    for tool in TOOLS[:3]:
        r = res[tool]
        if 'error' in r: rows.append(f"| {name} | {tool} | error: {r['error'][:80]} | | | | |"); continue
        err = f"{(r['macs'] - ref) / ref:+.2%}" if ref else '?'
        walls = ' '.join(f'{w:.2f}' for w in r['walls'])
        rows.append(f"| {name} | {tool} | {r['wall_s']:.2f} | {walls} | {r['rss_mb']:.0f} | "
                    f"{_g(r['macs'])} | {err} |")
    return rows


def _paired(other: dict, ours: dict) -> float:
    "Median over rounds of other/ours wall time: runs of one round ran back to back, under the same load"
    return statistics.median(a / b for a, b in zip(other['walls'], ours['walls']))


def _ratio_row(name: str, res: dict) -> str:
    ours, ti, tm, ref = (res[t] for t in TOOLS)
    if any('error' in r for r in (ours, ti, tm, ref)): return f'| {name} | error | | | | |'
    mem = ti['rss_mb'] / max(ours['rss_mb'], 1.0)
    ok = abs(ours['macs'] - ref['macs']) / ref['macs'] < 0.005
    return (f"| {name} | {ours['params'] / 1e6:.1f}M | {_paired(ti, ours):.1f}x | {mem:.1f}x | "
            f"{_paired(tm, ours):.2f}x | {'yes' if ok else 'NO'} |")


def report(results: dict, total_s: float, repeat: int, slow_s: float, load: str) -> str:
    "The markdown results file"
    head = ['# layer_summary vs torchinfo', '',
            f'Measured {time.strftime("%Y-%m-%d %H:%M")} in one run of `bench/summary_bench.py` '
            f'({total_s:.0f} s).',
            f'Machine: {_machine()}. Other processes (other engineers\' test runs) may have been running at '
            f'the same time (1-minute load average {load}), so wall times are indicative. Each cell is the '
            f'median of {repeat} runs, each in a fresh process, rounds interleaved (cells slower than '
            f'{slow_s:.0f} s: one run).', '',
            'Input (1, 3, 224, 224), depth 3. Wall time covers building the model and summarising it '
            '(imports excluded). Peak RSS is the process peak above its peak right after the imports. '
            '`torchinfo` is `summary(model, device=cpu)` on a model built with real weights (its default); '
            '`torchinfo_meta` builds on meta and passes `device="meta"`. Mult-adds error is against '
            '`FlopCounterMode` on meta (FLOPs / 2) plus one per bias element of every conv/linear module '
            'call.', '',
            '| model | tool | wall s (median) | each round | peak RSS MB | total mult-adds '
            '| vs flop counter |',
            '| --- | --- | ---: | ---: | ---: | ---: | ---: |']
    rows = [r for name, res in results.items() for r in _model_rows(name, res)]
    ratios = ['', '## Ratios (torchinfo / layer_summary)', '',
              'Time ratios are the median over rounds of the ratio within a round (the runs of a round ran '
              'back to back, under about the same load; a single torchinfo run is paired with round 1). '
              'Memory: median peak RSS above baseline.', '',
              'Targets: on models of 80M+ parameters at least 10x faster and 10x less memory than '
              'torchinfo\'s default; no slower than torchinfo on meta; total mult-adds within 0.5% of the '
              'flop counter.', '',
              '| model | params | time vs torchinfo | memory vs torchinfo | time vs torchinfo meta '
              '| mult-adds within 0.5% |',
              '| --- | ---: | ---: | ---: | ---: | --- |', *(_ratio_row(n, r) for n, r in results.items())]
    return '\n'.join(head + rows + ratios) + '\n'


def _merge(runs: list[dict]) -> dict:
    "The median run (by wall time) of one cell, with how many runs there were"
    ok = sorted((r for r in runs if 'error' not in r), key=lambda r: r['wall_s'])
    if not ok: return runs[0]
    return {**ok[(len(ok) - 1) // 2], 'walls': [r['wall_s'] for r in runs if 'error' not in r],
            'rss_mb': statistics.median(r['rss_mb'] for r in ok)}


def main(models: list[str], out: pathlib.Path, repeat: int = 5, slow_s: float = 10.0):
    "Measure every (tool, model) `repeat` times, interleaved; cells slower than `slow_s` run once"
    from fastprogress.fastprogress import progress_bar
    runs, t0, load0 = {(t, m): [] for m in models for t in TOOLS}, time.perf_counter(), os.getloadavg()[0]
    for rep in range(repeat):
        todo = [k for k, v in runs.items() if not v or ('error' not in v[0] and v[0]['wall_s'] < slow_s)]
        for tool, name in progress_bar(todo):
            r = measure(tool, name)
            runs[tool, name].append(r)
            print(f"{name:24} {tool:15} " + (f"{r['wall_s']:7.2f} s {r['rss_mb']:8.0f} MB {r['macs']:>16,}"
                                             if 'error' not in r else r['error']), flush=True)
    results = {m: {t: _merge(runs[t, m]) for t in TOOLS} for m in models}
    out.parent.mkdir(parents=True, exist_ok=True)
    load = f'{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end'
    out.write_text(report(results, time.perf_counter() - t0, repeat, slow_s, load))
    print(f'wrote {out}')


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--models', nargs='*', default=list(MODELS), choices=list(MODELS))
    ap.add_argument('--out', type=pathlib.Path, default=HERE / 'results' / 'summary.md')
    ap.add_argument('--repeat', type=int, default=5, help='runs per cell (the median is reported)')
    ap.add_argument('--worker', nargs=2, metavar=('TOOL', 'MODEL'), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker: print(json.dumps(worker(*a.worker)))
    else: main(a.models, a.out, a.repeat)
