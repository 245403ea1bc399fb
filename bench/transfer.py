"""Transfer benchmark on scikit-learn's digits: pretrain on 0-4, fine-tune on 5-9 from a few labelled images
per class. The methods: bench/transfer_methods.py.

Every method gets the same model (fastai xresnet18 at half width), the same pretrained weights, the same
epochs, batch size and labelled images, and its own best base LR from the same grid (picked on separate tuning
seeds); accuracy is measured once, at the end, on every unlabelled image of digits 5-9. Results:
bench/results/transfer.md.

    python bench/transfer.py                  # LR tuned per method on 3 seeds, then 10 evaluation seeds
    python bench/transfer.py --family vit     # the same with a small timm ViT (results: transfer_vit.md)
    python bench/transfer.py --quick
"""
from __future__ import annotations

import os, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastcore.script import call_parse

from transfer_methods import BASELINES, FAMILIES, evaluate, per_seed, pretrain, table, tune

OUT = {'xresnet': Path(__file__).parent / 'results' / 'transfer.md',
       'vit': Path(__file__).parent / 'results' / 'transfer_vit.md'}
MODEL = {'xresnet': "fastai `xresnet18` at half width (2.8M parameters)",
         'vit': "a small timm ViT (`vit_tiny_patch16_224` at 32x32 with 4x4 patches, width 96, depth 6, "
                "3 heads: 0.7M parameters)"}


def tuning_table(acc: dict) -> str:
    "Mean accuracy of every method at every LR of the grid, on the tuning seeds"
    lrs = list(next(iter(acc.values())))
    rows = [f"| {m} | " + ' | '.join(f'{np.mean(a[lr]) * 100:.1f}' for lr in lrs) + ' |'
            for m, a in acc.items()]
    head = '| method | ' + ' | '.join(f'lr {lr:g}' for lr in lrs) + ' |'
    return '\n'.join([head, '| --- |' + ' ---: |' * len(lrs), *rows])


def paired(res: dict) -> str:
    "Each fast_impl method vs the best baseline (by mean), seed by seed: mean difference, its std error, wins"
    base = max((m for m in BASELINES if m in res), key=lambda m: np.mean(res[m]['acc']))
    b = np.array(res[base]['acc']) * 100
    lines = [f'| method | mean difference vs "{base}" (points) | std error | seeds won or tied | verdict |',
             '| --- | ---: | ---: | ---: | --- |']
    for m, r in res.items():
        if m in BASELINES: continue
        d = np.array(r['acc']) * 100 - b
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.
        verdict = ('better' if d.mean() > 2 * se else 'worse' if d.mean() < -2 * se
                   else 'tie (within 2 std errors)')
        lines.append(f"| {m} | {d.mean():+.1f} | {se:.1f} | {int((d >= 0).sum())} of {len(d)} | {verdict} |")
    return '\n'.join(lines)


def _setup(c: dict) -> str:
    "The markdown list of what every method gets: model, pretraining, fine-tuning, budget, baselines"
    return f"""- Model: {MODEL[c['family']]}, 32x32 images (the 8x8 digits upscaled, 3 channels),
  no normalisation, no augmentation.
- Pretraining: digits 0-4 (80% of them), {c['pretrain_epochs']} epochs of `fit_one_cycle`
  (lr {c['pre_lr']:g}, bs 32); accuracy on the other 20%: {c['pre_acc']:.3f} ({c['t_pre']:.0f}s).
- Fine-tuning: digits 5-9, {c['n_per_class']} labelled images per class (drawn per seed; the same images for
  every method), accuracy on all the other images of 5-9 (about 850), measured once after training.
- Same budget for every method: {c['epochs']} epochs of one-cycle schedules, Adam, batch size {c['bs']},
  fastai's default wd 0.01. `fine_tune` spends 1 of the {c['epochs']} epochs with the body frozen, then
  `slice(lr/200, lr/2)` (fastai's recipe). The fast_impl methods on fast_impl's Learner: stage groups trained
  from the start with `slice(lr/10, lr)` spread geometrically or `layer_decay(lr, n_groups, 0.75)`; one group
  per block (`groups='blocks'`, BEiT-style) with layer decay 0.75; stage groups with gradual unfreezing
  (ULMFiT: the head for one epoch, then one more group, or a few for many groups, per one-epoch phase, the
  last phase taking the remaining epochs; layer decay 0.75).
- Baselines: from scratch, the whole pretrained model at one LR, and (xresnet only: fastai has its
  `model_meta`) fastai's `vision_learner` with its split (3 groups: stem, body, head) and `fine_tune`.
  "fastai model, fast_impl stage groups" is the same `vision_learner` model and recipe, with
  `splitter=stage_splitter()`: only the groups differ.
"""


def _report(res, tuned, cfg: dict) -> str:
    "The markdown report: how it ran, the setup, the LR tuning, the results, paired and per seed"
    import platform
    c = cfg
    tuning = (f"""Base LR per method: the best of {c['lrs']} by mean accuracy on {c['tune_seeds']} tuning
seeds (other labelled images than the evaluation seeds'), chosen before the evaluation runs:

{tuning_table(tuned)}
""" if tuned else f"Base LR {c['lrs'][0]:g} for every method (no tuning).\n")
    return f"""# Transfer: pretrain on digits 0-4, fine-tune on digits 5-9 ({c['family']})

Generated by `python bench/transfer.py --family {c['family']}` ({c['seeds']} evaluation seeds;
{c['total'] / 60:.1f} minutes with {c['threads']} torch threads on {platform.machine()}, torch
{torch.__version__}; the CPU was shared with other jobs, so times are rough).

{_setup(c)}
{tuning}
## Results ({c['seeds']} seeds)

{table(res)}

Paired by seed (the same labelled images) against the best baseline:

{paired(res)}

Per seed (accuracy %):

{per_seed(res, range(c['seeds']))}
"""


@call_parse
def main(seeds: int = 10,  # evaluation seeds (each draws other labelled images)
         tune_seeds: int = 3,  # seeds (100, 101, ...) that pick each method's LR from `lrs`
         lrs: str = '3e-3,1e-2,3e-2',  # base LR grid (comma-separated); one value: no tuning
         n_per_class: int = 10,  # labelled images per class of digits 5-9
         epochs: int = 10,  # epochs of every fine-tuning method
         bs: int = 16,  # batch size
         pretrain_epochs: int = 8,  # epochs of pretraining on digits 0-4
         threads: int = 2,  # torch CPU threads
         quick: bool = False,  # a tiny run (checks the script; numbers meaningless)
         family: str = 'xresnet',  # the model family: xresnet (fastai xresnet18, half width) or vit (timm)
         out: str = None):  # where to write the markdown results (default: bench/results/transfer[_vit].md)
    "Pretrain, tune each method's LR, run every method on every seed; print and write the results"
    torch.set_num_threads(threads)
    grid = [float(x) for x in lrs.split(',')]
    if quick: seeds, tune_seeds, epochs, pretrain_epochs, grid = min(seeds, 2), 1, 2, 1, grid[:2]
    if family not in FAMILIES:
        raise SystemExit(f"--family must be one of {', '.join(FAMILIES)}; got {family!r}")
    arch, methods, pre_lr = FAMILIES[family]
    out = out or str(OUT[family])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'pretrained.pth')
        pre_acc = pretrain(path, pretrain_epochs, pre_lr, 32, arch)
        t_pre = time.perf_counter() - t0
        print(f'pretrained on digits 0-4: accuracy {pre_acc:.3f} ({t_pre:.0f}s)')
        if len(grid) > 1:
            lr, tuned = tune(path, grid, range(100, 100 + tune_seeds), n_per_class, epochs, bs, arch, methods)
        else: lr, tuned = {m: grid[0] for m in methods}, None
        res = evaluate(path, lr, range(seeds), n_per_class, epochs, bs, arch)
    cfg = dict(seeds=seeds, tune_seeds=tune_seeds, lrs=grid, n_per_class=n_per_class, epochs=epochs, bs=bs,
               pretrain_epochs=pretrain_epochs, threads=threads, pre_acc=pre_acc, t_pre=t_pre,
               total=time.perf_counter() - t0, family=family, pre_lr=pre_lr)
    report = _report(res, tuned, cfg)
    print(report)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(report)
