"""Transfer on scikit-learn's digits: pretrain on 0-4, fine-tune on 5-9 from a few labelled images per class.

The methods compared (same model, pretrained weights, epochs, batch size and labelled images) and the runs behind
both `bench/transfer.py` (LR tuning, 10 seeds, the report) and `fast-impl demo` (a short version).
"""
from __future__ import annotations

__all__ = ['xresnet18_half', 'vit_digits', 'SkipValid', 'TUNED_LRS', 'pretrain', 'METHODS', 'BASELINES', 'FAMILIES',
           'run', 'tune', 'evaluate', 'table', 'per_seed']

import math, time

import numpy as np
import torch
from fastai.callback.core import Callback, CancelValidException
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from fastprogress.fastprogress import progress_bar

from .data import digits_dls
from .learner import discriminative_learner, layer_decay
from .archs import read_weights
from .split import stage_splitter


def xresnet18_half(pretrained=False, **kwargs):
    "fastai's xresnet18 at half width (2.8M parameters): small enough for CPUs"
    from fastai.vision.models.xresnet import xresnet18
    return xresnet18(pretrained, widen=0.5, **kwargs)


def vit_digits(pretrained=False, **kwargs):
    "A small timm ViT at the digits' size: 32x32 images, 4x4 patches (64 tokens), width 96, depth 6, 3 heads (0.7M)"
    import timm
    kwargs = dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3) | kwargs
    return timm.create_model('vit_tiny_patch16_224', pretrained=False, **kwargs)


class SkipValid(Callback):
    "Skip the per-epoch validation: every method is scored once, at the end"
    def before_validate(self): raise CancelValidException()


# the demo's base LR of each method, tuned by bench/transfer.py (best of 3e-3, 1e-2, 3e-2 on 3 tuning seeds) in its
# 2-thread run; the 1-thread rerun in bench/results/transfer.md picked 1e-2, 3e-2, 3e-2 for the whole model, the
# fastai model with stage groups and the slice (kept here: the demo's README table comes from these)
TUNED_LRS = {'from scratch': 1e-2, 'whole model, one LR': 3e-3, 'fastai vision_learner + fine_tune': 3e-2,
             'fastai model, fast_impl stage groups + fine_tune': 1e-2, 'fast_impl stage groups + slice(lr/10, lr)': 1e-2,
             'fast_impl stage groups + layer decay 0.75': 1e-2}


def pretrain(path, epochs: int, lr: float, bs: int, arch=xresnet18_half) -> float:
    "Train `arch` on digits 0-4 and save the weights to `path`; returns the held-out accuracy"
    set_seed(0)
    learn = discriminative_learner(digits_dls(range(5), bs=bs, seed=0), arch, metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, lr)
        acc = float(learn.validate()[1])
    torch.save(learn.model.state_dict(), path)
    return acc

# ---------------------------------------------------------------- the methods: (dls, weights file, E, lr) -> Learner, trained


def scratch(dls, path, E, lr, arch=xresnet18_half):
    "No pretraining: every group at `lr`"
    learn = discriminative_learner(dls, arch, metrics=accuracy)
    return learn, lambda: learn.fit_one_cycle(E, lr, cbs=SkipValid())


def one_lr(dls, path, E, lr, arch=xresnet18_half):
    "Pretrained, the whole model at one LR"
    learn = discriminative_learner(dls, arch, pretrained=path, normalize=False, metrics=accuracy)
    learn.unfreeze()
    return learn, lambda: learn.fit_one_cycle(E, lr, cbs=SkipValid())


def _fastai_learner(dls, path, splitter=None):
    "fastai's `vision_learner` (its cut, head and, unless given, `model_meta` split) with the pretrained body loaded"
    from fastai.vision.learner import model_meta, vision_learner
    from fastai.vision.models.xresnet import xresnet18
    model_meta.setdefault(xresnet18_half, model_meta[xresnet18])  # fastai's own xresnet cut and 3-group split
    kw = {} if splitter is None else dict(splitter=splitter)
    learn = vision_learner(dls, xresnet18_half, pretrained=False, normalize=False, metrics=accuracy, **kw)
    body = learn.model[0]
    body.load_state_dict({k: v for k, v in read_weights(path).items() if k in body.state_dict()})  # strict: all must fit
    return learn


def fastai_fine_tune(dls, path, E, lr, arch=xresnet18_half):
    "fastai's default: vision_learner (3 groups from model_meta, fastai's head) and `fine_tune`"
    learn = _fastai_learner(dls, path)
    return learn, lambda: learn.fine_tune(E - 1, base_lr=lr, freeze_epochs=1, cbs=SkipValid())


def fastai_model_stages(dls, path, E, lr, arch=xresnet18_half):
    "fastai's vision_learner model and head, split by fast_impl's `stage_splitter`, `fine_tune`"
    learn = _fastai_learner(dls, path, splitter=stage_splitter())
    return learn, lambda: learn.fine_tune(E - 1, base_lr=lr, freeze_epochs=1, cbs=SkipValid())


def _pretrained(dls, path, arch=xresnet18_half, groups='stages'):
    "fast_impl's Learner on the pretrained weights (the arch's own head, `groups`), unfrozen"
    learn = discriminative_learner(dls, arch, groups=groups, pretrained=path, normalize=False, metrics=accuracy)
    learn.unfreeze()
    return learn


def stages_slice(dls, path, E, lr, arch=xresnet18_half):
    "fast_impl: stage groups, `slice(lr/10, lr)` spread over them (fastai gives `slice(lr)`'s body lr/10)"
    learn = _pretrained(dls, path, arch)
    return learn, lambda: learn.fit_one_cycle(E, slice(lr / 10, lr), cbs=SkipValid())


def stages_decay(dls, path, E, lr, arch=xresnet18_half, decay=0.75):
    "fast_impl: stage groups, `layer_decay(lr, learn, 0.75)`"
    learn = _pretrained(dls, path, arch)
    return learn, lambda: learn.fit_one_cycle(E, layer_decay(lr, learn, decay), cbs=SkipValid())


def blocks_decay(dls, path, E, lr, arch=xresnet18_half, decay=0.75):
    "fast_impl: one group per block (`groups='blocks'`), `layer_decay(lr, learn, 0.75)` (BEiT-style)"
    learn = _pretrained(dls, path, arch, groups='blocks')
    return learn, lambda: learn.fit_one_cycle(E, layer_decay(lr, learn, decay), cbs=SkipValid())


def phases(n: int, E: int) -> tuple[int, list[int]]:
    "Gradual unfreezing of `n` groups in `E` epochs: (`step`, epochs per phase), one epoch a phase, the rest last"
    step = max(1, math.ceil((n - 1) / max(1, E // 2)))
    k = len(range(n - 1, 0, -step)) + 1
    return step, [1] * (k - 1) + [E - (k - 1)]


def stages_gradual(dls, path, E, lr, arch=xresnet18_half, decay=0.75):
    "fast_impl: stage groups, gradual unfreezing from the head (ULMFiT), layer decay 0.75; same epochs in all"
    learn = _pretrained(dls, path, arch)
    step, per = phases(learn.n_groups, E)
    return learn, lambda: learn.gradual_unfreeze(per, lr_max=lr, decay=decay, step=step, cbs=SkipValid())


METHODS = {'from scratch': scratch, 'whole model, one LR': one_lr, 'fastai vision_learner + fine_tune': fastai_fine_tune,
           'fastai model, fast_impl stage groups + fine_tune': fastai_model_stages,
           'fast_impl stage groups + slice(lr/10, lr)': stages_slice,
           'fast_impl stage groups + layer decay 0.75': stages_decay,
           'fast_impl blocks + layer decay 0.75': blocks_decay,
           'fast_impl stage groups + gradual unfreezing': stages_gradual}
BASELINES = list(METHODS)[:3]
# family -> (arch, its methods (fastai's vision_learner ones only for the xresnet it has model_meta for), pretrain lr)
FAMILIES = {'xresnet': (xresnet18_half, list(METHODS), 1e-2),
            'vit': (vit_digits, [m for m in METHODS if 'fastai' not in m], 2e-3)}


def run(method, seed: int, path, n_per_class: int, E: int, lr: float, bs: int,
        arch=xresnet18_half) -> tuple[float, float, int]:
    "Accuracy on the unlabelled digits 5-9, seconds and number of groups of one fine-tuning run"
    t = time.perf_counter()
    set_seed(seed)
    dls = digits_dls(range(5, 10), n_per_class=n_per_class, bs=bs, seed=seed)
    learn, fit = method(dls, path, E, lr, arch=arch)
    with learn.no_bar(), learn.no_logging():
        fit()
        acc = float(learn.validate()[1])
    return acc, time.perf_counter() - t, len(learn.opt.param_lists)


def tune(path, lrs: list[float], seeds, n_per_class: int, E: int, bs: int, arch=xresnet18_half,
         methods=None) -> tuple[dict, dict]:
    "Each method's base LR: the best mean accuracy over the tuning `seeds` (other labelled images than the evaluation's)"
    acc = {m: {lr: [] for lr in lrs} for m in methods or METHODS}
    for seed in progress_bar(list(seeds)):
        for m in acc:
            for lr in lrs: acc[m][lr].append(run(METHODS[m], seed, path, n_per_class, E, lr, bs, arch)[0])
    return {m: max(lrs, key=lambda lr: np.mean(a[lr])) for m, a in acc.items()}, acc


def evaluate(path, lr: dict, seeds, n_per_class: int, E: int, bs: int, arch=xresnet18_half) -> dict:
    "Accuracy, time and groups of each method in `lr` (name -> its base LR) on every evaluation seed"
    res = {m: dict(acc=[], time=[], groups=0, lr=lr[m]) for m in lr}
    for seed in progress_bar(list(seeds)):
        for m in lr:
            acc, t, g = run(METHODS[m], seed, path, n_per_class, E, lr[m], bs, arch)
            res[m]['acc'].append(acc); res[m]['time'].append(t); res[m]['groups'] = g
    return res


def table(res: dict) -> str:
    "The markdown results table: mean ± std accuracy, time per run, groups, LR"
    best = max(np.mean(res[m]['acc']) for m in BASELINES if m in res)  # the baselines run for every family
    lines = ['| method | groups | base LR | accuracy (mean ± std) | vs best baseline | min | max | time per run (s) |',
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for m, r in res.items():
        a = np.array(r['acc']) * 100
        lines.append(f"| {m} | {r['groups']} | {r['lr']:g} | {a.mean():.1f} ± {a.std(ddof=1) if len(a) > 1 else 0:.1f} % | "
                     f"{a.mean() - best * 100:+.1f} | {a.min():.1f} | {a.max():.1f} | {np.mean(r['time']):.1f} |")
    return '\n'.join(lines)


def per_seed(res: dict, seeds) -> str:
    "Accuracy of every method and seed (paired: each seed picks the same labelled images for every method)"
    head = '| method | ' + ' | '.join(f'seed {s}' for s in seeds) + ' |'
    rows = [f"| {m} | " + ' | '.join(f'{a * 100:.1f}' for a in r['acc']) + ' |' for m, r in res.items()]
    return '\n'.join([head, '| --- |' + ' ---: |' * len(seeds), *rows])
