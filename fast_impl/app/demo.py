"""`fast-impl demo`: the main job on the embedded digits: the model's summary, its layer groups with rates,
and fine-tuning from digits 0-4 to 5-9 against the baselines (a table and a plot)."""
from __future__ import annotations

__all__ = ['RECIPES', 'BASELINES', 'evaluate', 'paired', 'verdict', 'table', 'plot_transfer', 'demo']

import pathlib, tempfile

import numpy as np
from fastprogress.fastprogress import progress_bar

from ..fastai.recipes import (fastai_fine_tune, fastai_model_stages, one_lr, run, scratch, stages_decay,
                              stages_slice)
from ..fastai.xresnet import xresnet18_half

# name -> (method, its base LR, from bench/transfer.py's tuning; bench/results/transfer.md says how)
RECIPES = {'from scratch': (scratch, 1e-2), 'whole model, one LR': (one_lr, 3e-3),
           'fastai vision_learner + fine_tune': (fastai_fine_tune, 3e-2),
           'fastai model, fast_impl stage groups + fine_tune': (fastai_model_stages, 1e-2),
           'fast_impl stage groups + slice(lr/10, lr)': (stages_slice, 1e-2),
           'fast_impl stage groups + layer decay 0.75': (stages_decay, 1e-2)}
BASELINES = list(RECIPES)[:3]


def evaluate(path, recipes: dict, seeds, n_per_class: int, E: int, bs: int, arch=xresnet18_half) -> dict:
    """Accuracy, time and groups of each method of `recipes` (name -> (method, base LR)) on every seed, from
    the pretrained weights in `path`"""
    res = {m: dict(acc=[], time=[], groups=0, lr=lr) for m, (_, lr) in recipes.items()}
    for seed in progress_bar(list(seeds)):
        for m, (method, lr) in recipes.items():
            acc, t, g = run(method, seed, path, n_per_class, E, lr, bs, arch)
            res[m]['acc'].append(acc); res[m]['time'].append(t); res[m]['groups'] = g
    return res


def paired(acc, base) -> tuple[float, float]:
    """Mean and standard error of the seed-by-seed differences `acc - base` (each seed draws the same images
    for every method); the error is nan with one seed"""
    acc, base = np.asarray(acc, dtype=float), np.asarray(base, dtype=float)
    if acc.ndim != 1 or acc.shape != base.shape or not len(acc):
        raise ValueError(f"paired needs one value per seed for both, as many of each; got {len(acc)} and "
                         f"{len(base)}")
    d = acc - base
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float('nan')


def verdict(diff: float, se: float) -> str:
    """'win' when the paired difference `diff` is beyond two standard errors `se`, 'worse' when beyond minus
    two, else 'tie'; 'n/a' without an error (one seed)"""
    if not np.isfinite(se): return 'n/a'
    return 'win' if diff > 2 * se else 'worse' if diff < -2 * se else 'tie'


_HEAD = ['method', 'groups', 'base LR', 'accuracy (mean ± std)', 'vs best baseline (± std error)', 'verdict',
         'min', 'max', 'time per run (s)']


def _row(m: str, r: dict, base: np.ndarray, best: str) -> list[str]:
    "The cells of method `m` (results `r`) against `base`, the accuracies of the best baseline `best`"
    a = np.array(r['acc']) * 100
    std = a.std(ddof=1) if len(a) > 1 else 0
    d, se = paired(a, base)
    return [m, str(r['groups']), f"{r['lr']:g}", f'{a.mean():.1f} ± {std:.1f} %',
            f'{d:+.1f} ± ' + (f'{se:.1f}' if np.isfinite(se) else 'n/a'),
            'best baseline' if m == best else verdict(d, se), f'{a.min():.1f}', f'{a.max():.1f}',
            f"{np.mean(r['time']):.1f}"]


def table(res: dict, baselines=BASELINES) -> str:
    """The markdown results table: mean ± std accuracy; the paired difference from the best of `baselines`
    (by mean) with its standard error and a verdict; min, max, time, groups, LR; a line on how to read it"""
    best = max((m for m in baselines if m in res), key=lambda m: np.mean(res[m]['acc']))
    base, n = np.array(res[best]['acc']) * 100, len(res[best]['acc'])
    rows = [_HEAD, ['---', '---:', '---:', '---:', '---:', '---', '---:', '---:', '---:']]
    rows += [_row(m, r, base, best) for m, r in res.items()]
    note = (f'vs best baseline: accuracy minus that of "{best}" on the same seed, in points, averaged over '
            f'the {n} seeds, ± its standard error; win or worse beyond two standard errors, else tie' if n > 1
            else f'vs best baseline: accuracy minus that of "{best}", in points; one seed gives no standard '
                 f'error, so no verdict (n/a): run more seeds')
    return '\n'.join(['| ' + ' | '.join(c) + ' |' for c in rows] + ['', note])


def plot_transfer(res: dict, path):
    "Save a bar chart of each method's accuracy (mean, std, and every seed as a dot) to `path`; the figure"
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(res)
    accs = [np.array(res[m]['acc']) * 100 for m in names]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(names) + 1.2))
    ours = lambda m: 'fast_impl stage groups +' in m and 'fine_tune' not in m
    colors = ['tab:blue' if ours(m) else 'tab:gray' for m in names]
    ax.barh(range(len(names)), [a.mean() for a in accs], xerr=[a.std() for a in accs], color=colors,
            alpha=0.75)
    for i, a in enumerate(accs): ax.plot(a, [i] * len(a), 'k.', ms=4)
    ax.set_yticks(range(len(names)), names, fontsize='small')
    ax.invert_yaxis()
    lo = min(a.min() for a in accs)
    ax.set(xlim=(max(0, lo - 5), 100), xlabel='accuracy on the unlabelled digits 5-9 (%)',
           title='fine-tuning from digits 0-4 to 5-9, 10 labelled images per class')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def _groups(path):
    "Part 3: the fast_impl stage groups of the pretrained model, with layer-decay rates 0.75"
    from ..fastai.data import digits_dls
    from ..fastai.recipes import pretrained_learner
    from ..lr import layer_decay
    learn = pretrained_learner(digits_dls(range(5, 10), n_per_class=10, bs=16, seed=0), path)
    learn.create_opt()
    learn.opt.set_hypers(lr=layer_decay(1e-2, learn, 0.75))
    print('3. Its layer groups (fast_impl stage groups), with layer-decay learning rates 0.75:\n')
    print(f'{learn.show_groups()}\n')


def _model():
    "Part 1: the model's summary, on the meta device"
    from ..summary import layer_summary
    from ..summary import arch_summary
    print('1. The model: fastai xresnet18 at half width (built on the meta device, no weights)\n')
    print(arch_summary(xresnet18_half, verbose=False))
    s = layer_summary(xresnet18_half, input_size=(1, 3, 32, 32), depth=0, n_out=5)
    print(f'{s.total_params:,} parameters, {s.total_mult_adds / 1e6:.1f}M mult-adds per 32x32 image\n')


def demo(out='demo_out', seeds: int = 5, quick: bool = False) -> dict:
    "The main job on the embedded digits: summary, layer groups with LRs, fine-tuning vs the baselines, plot"
    import torch
    from ..checks import check_count
    from ..fastai.recipes import pretrain
    from .plan import check_out
    seeds = check_count(seeds, 'seeds')
    out = check_out(out); out.mkdir(parents=True, exist_ok=True)
    epochs, pre_epochs, seeds = (2, 1, 1) if quick else (10, 8, seeds)
    torch.set_num_threads(1)  # tiny models gain little from more; on a busy machine 2 threads ran 10x slower
    print('fast_impl demo: transfer learning on scikit-learn digits (embedded, no download)\n')
    _model()
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / 'pretrained.pth'
        print(f'2. Pretraining on digits 0-4 ({pre_epochs} epoch{"s" * (pre_epochs > 1)}) ...', flush=True)
        print(f'   held-out accuracy {pretrain(path, pre_epochs, 1e-2, 32):.3f}\n')
        _groups(path)
        print(f'4. Fine-tuning on digits 5-9 from 10 labelled images per class: {len(RECIPES)} methods x '
              f'{seeds} seeds, {epochs} epochs each', flush=True)
        res = evaluate(path, RECIPES, range(seeds), 10, epochs, 16)
    text = table(res)
    (out / 'results.md').write_text(f'# fast_impl demo: digits 0-4 -> 5-9 ({seeds} seeds)\n\n{text}\n')
    plot_transfer(res, out / 'transfer.png')
    print(f'\n{text}\n\nresults table: {out / "results.md"}\nplot written to: {out / "transfer.png"}')
    return res
