"""Startup cost of the command line: `fast-impl summary resnet18` against importing torch and torchvision.

The baseline is `python -c "import torch, torchvision"`. Both run in fresh processes, alternating, N times
each; the table gives the median wall time and the ratio.
Target (issue 7): at most 1.3x. Results go to bench/results/cli_startup.md.
"""
from __future__ import annotations

import pathlib, platform, statistics, subprocess, sys, time

ROOT = pathlib.Path(__file__).parents[1]
N = 7
CMDS = {
    'python -c "import torch, torchvision"': [sys.executable, '-c', 'import torch, torchvision'],
    'fast-impl summary resnet18': [sys.executable, '-m', 'fast_impl.app.cli', 'summary', 'resnet18'],
    'fast-impl summary torchvision:resnet18': [sys.executable, '-m', 'fast_impl.app.cli', 'summary',
                                               'torchvision:resnet18'],
}
CHECK = ("import sys; from fast_impl.app.cli import main; main(['summary', 'resnet18']); "
         "print('fastai' in sys.modules)")


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main():
    times = {k: [] for k in CMDS}
    for i in range(N):
        for k, cmd in CMDS.items(): times[k].append(timed(cmd))
        print(f'round {i + 1}/{N}', flush=True)
    fastai_loaded = subprocess.run([sys.executable, '-c', CHECK], capture_output=True,
                                   text=True).stdout.split()[-1]
    base = statistics.median(times[next(iter(CMDS))])
    rows = [f'| `{k}` | {statistics.median(v):.2f} | {min(v):.2f} | {statistics.median(v) / base:.2f}x |'
            for k, v in times.items()]
    md = '\n'.join([
        '# Command-line startup', '',
        f'Fresh processes, {N} alternating runs each, median and best wall time; {platform.machine()}, '
        f'{__import__("os").cpu_count()} cores, Python {platform.python_version()}. '
        'Target: at most 1.3x the baseline.',
        '', '| command | median s | best s | vs baseline |', '| --- | ---: | ---: | ---: |', *rows, '',
        f'`fast-impl summary resnet18` imports fastai: {fastai_loaded}.', ''])
    out = ROOT / 'bench' / 'results' / 'cli_startup.md'
    out.write_text(md)
    print(md)


if __name__ == '__main__': main()
