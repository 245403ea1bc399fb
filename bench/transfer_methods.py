"""The methods, model families, LR tuning and tables of `bench/transfer.py` (pretrain on digits 0-4, fine-tune
on 5-9 from a few labelled images per class): the demo's recipes (`fast_impl.app.demo.RECIPES`) and two more.

The demo's base LRs (in `RECIPES`) are this benchmark's choices: the best of 3e-3, 1e-2, 3e-2 on 3 tuning
seeds in its 2-thread run; the 1-thread rerun in bench/results/transfer.md picked 1e-2, 3e-2, 3e-2 for the
whole model, the fastai model with stage groups and the slice (the demo keeps the first: its README table
comes from them).
"""
from __future__ import annotations

__all__ = ['vit_digits', 'blocks_decay', 'phases', 'stages_gradual', 'surgical', 'auto_rgn', 'no_fine_tuning',
           'METHODS', 'BASELINES', 'FAMILIES', 'SHIFT_METHODS', 'tune', 'evaluate', 'table', 'per_seed',
           'pretrain']

import math

import numpy as np
from fastprogress.fastprogress import progress_bar

from fast_impl.app import demo
from fast_impl.app.demo import table  # noqa: F401  (the results table, shared with the demo)
from fast_impl.fastai.rgn import AutoRGN
from fast_impl.fastai.xresnet import xresnet18_half
from fast_impl.fastai.recipes import SkipValid, pretrain, pretrained_learner, run  # noqa: F401  (pretrain)
from fast_impl.lr import layer_decay


def vit_digits(pretrained=False, **kwargs):
    """A small timm ViT at the digits' size: 32x32 images, 4x4 patches (64 tokens), width 96, depth 6, 3 heads
    (0.7M parameters)"""
    import timm
    kwargs = dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3) | kwargs
    return timm.create_model('vit_tiny_patch16_224', pretrained=False, **kwargs)


def blocks_decay(dls, path, E, lr, arch=xresnet18_half, decay=0.75):
    "fast_impl: one group per block (`groups='blocks'`), `layer_decay(lr, learn, 0.75)` (BEiT-style)"
    learn = pretrained_learner(dls, path, arch, groups='blocks')
    return learn, lambda: learn.fit_one_cycle(E, layer_decay(lr, learn, decay), cbs=SkipValid())


def phases(n: int, E: int) -> tuple[int, list[int]]:
    "Unfreezing `n` groups in `E` epochs: (`step`, epochs per phase); one epoch a phase, the rest last"
    step = max(1, math.ceil((n - 1) / max(1, E // 2)))
    k = len(range(n - 1, 0, -step)) + 1
    return step, [1] * (k - 1) + [E - (k - 1)]


def stages_gradual(dls, path, E, lr, arch=xresnet18_half, decay=0.75):
    "fast_impl: stage groups, gradual unfreezing from the head (ULMFiT), layer decay 0.75; same epochs in all"
    learn = pretrained_learner(dls, path, arch)
    step, per = phases(learn.n_groups, E)
    return learn, lambda: learn.gradual_unfreeze(per, lr_max=lr, decay=decay, step=step, cbs=SkipValid())


def surgical(groups):
    "Surgical fine-tuning (Lee et al. 2023): only the stage groups `groups` train (`train_only`), at one LR"
    def method(dls, path, E, lr, arch=xresnet18_half):
        learn = pretrained_learner(dls, path, arch)
        learn.train_only(groups)
        return learn, lambda: learn.fit_one_cycle(E, lr, cbs=SkipValid())
    return method


def auto_rgn(per: str):
    "Stage groups, one-cycle at `lr` times Auto-RGN's normalised relative gradient norm (`AutoRGN(per)`)"
    def method(dls, path, E, lr, arch=xresnet18_half):
        learn = pretrained_learner(dls, path, arch)
        return learn, lambda: learn.fit_one_cycle(E, lr, cbs=[SkipValid(), AutoRGN(per)])
    return method


def no_fine_tuning(dls, path, E, lr, arch=xresnet18_half):
    "The pretrained model as it is (its own head): a reference where the classes are the pretraining's"
    return pretrained_learner(dls, path, arch), lambda: None


METHODS = {m: method for m, (method, _) in demo.RECIPES.items()} | {
    'fast_impl blocks + layer decay 0.75': blocks_decay,
    'fast_impl stage groups + gradual unfreezing': stages_gradual}
BASELINES = demo.BASELINES
# family -> (arch, its methods (fastai's vision_learner ones only for the xresnet it has model_meta for),
# pretrain lr)
FAMILIES = {'xresnet': (xresnet18_half, list(METHODS), 1e-2),
            'vit': (vit_digits, [m for m in METHODS if 'fastai' not in m], 2e-3)}


def tune(path, lrs: list[float], seeds, n_per_class: int, E: int, bs: int, arch=xresnet18_half,
         methods=None) -> tuple[dict, dict]:
    """Each method's base LR: the best mean accuracy over the tuning `seeds` (other labelled images than the
    evaluation's)"""
    acc = {m: {lr: [] for lr in lrs} for m in methods or METHODS}
    for seed in progress_bar(list(seeds)):
        for m in acc:
            for lr in lrs: acc[m][lr].append(run(METHODS[m], seed, path, n_per_class, E, lr, bs, arch)[0])
    return {m: max(lrs, key=lambda lr: np.mean(a[lr])) for m, a in acc.items()}, acc


def evaluate(path, lr: dict, seeds, n_per_class: int, E: int, bs: int, arch=xresnet18_half) -> dict:
    "Accuracy, time and groups of each method in `lr` (name -> its base LR) on every evaluation seed"
    return demo.evaluate(path, {m: (METHODS[m], lr[m]) for m in lr}, seeds, n_per_class, E, bs, arch)


def per_seed(res: dict, seeds) -> str:
    "Accuracy of every method and seed (paired: each seed picks the same labelled images for every method)"
    head = '| method | ' + ' | '.join(f'seed {s}' for s in seeds) + ' |'
    rows = [f"| {m} | " + ' | '.join(f'{a * 100:.1f}' for a in r['acc']) + ' |' for m, r in res.items()]
    return '\n'.join([head, '| --- |' + ' ---: |' * len(seeds), *rows])
# the shift benchmark's (bench/shift_transfer.py) methods, baselines first
SHIFT_METHODS = {'from scratch': METHODS['from scratch'],
                 'whole model, one LR': METHODS['whole model, one LR'],
                 'fastai vision_learner + fine_tune': METHODS['fastai vision_learner + fine_tune'],
                 'pretrained, no fine-tuning': no_fine_tuning,
                 'stage groups + slice(lr/10, lr)': METHODS['fast_impl stage groups + slice(lr/10, lr)'],
                 'stage groups + layer decay 0.75': METHODS['fast_impl stage groups + layer decay 0.75'],
                 'stage groups + gradual unfreezing': stages_gradual,
                 'surgical: first group only': surgical([0]), 'surgical: last group only': surgical([-1]),
                 'Auto-RGN per group': auto_rgn('group'), 'Auto-RGN per tensor': auto_rgn('tensor')}
