"""Transfer benchmark on scikit-learn's digits: pretrain on 0-4, fine-tune on 5-9 from a few labelled images per class.

Every method gets the same model (fastai xresnet18 at half width), the same pretrained weights, the same epochs,
batch size and labelled images, and its own best base LR from the same grid (picked on separate tuning seeds); accuracy is measured once, at the end, on every unlabelled image
of digits 5-9. Results: bench/results/transfer.md.

    python bench/transfer.py            # LR tuned per method on 3 seeds, then 10 evaluation seeds: ~5 min on 2 cores
    python bench/transfer.py --quick
"""
from __future__ import annotations

import os, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastai.callback.core import Callback, CancelValidException
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from fastai.vision.learner import model_meta, vision_learner
from fastai.vision.models.xresnet import xresnet18
from fastcore.script import call_parse
from fastprogress.fastprogress import progress_bar

from fast_impl.data import digits_dls
from fast_impl.learner import discriminative_learner, layer_decay
from fast_impl.split import stage_splitter

OUT = Path(__file__).parent / 'results' / 'transfer.md'


def xresnet18_half(pretrained=False, **kwargs):
    "fastai's xresnet18 at half width (2.8M parameters): small enough for CPUs"
    return xresnet18(pretrained, widen=0.5, **kwargs)


model_meta[xresnet18_half] = model_meta[xresnet18]  # fastai's own xresnet cut and 3-group split apply to it


class SkipValid(Callback):
    "Skip the per-epoch validation: every method is scored once, at the end"
    def before_validate(self): raise CancelValidException()


def pretrain(path, epochs: int, lr: float, bs: int) -> float:
    "Train on digits 0-4 and save the weights to `path`; returns the held-out accuracy"
    set_seed(0)
    learn = discriminative_learner(digits_dls(range(5), bs=bs, seed=0), xresnet18_half, metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, lr)
        acc = float(learn.validate()[1])
    torch.save(learn.model.state_dict(), path)
    return acc

# ---------------------------------------------------------------- the methods: (dls, weights file, E, lr) -> Learner, trained


def scratch(dls, path, E, lr):
    "No pretraining: every group at `lr`"
    learn = discriminative_learner(dls, xresnet18_half, metrics=accuracy)
    return learn, lambda: learn.fit_one_cycle(E, lr, cbs=SkipValid())


def one_lr(dls, path, E, lr):
    "Pretrained, the whole model at one LR"
    learn = discriminative_learner(dls, xresnet18_half, pretrained=path, normalize=False, metrics=accuracy)
    learn.unfreeze()
    return learn, lambda: learn.fit_one_cycle(E, lr, cbs=SkipValid())


def _fastai_learner(dls, path, splitter=None):
    "fastai's `vision_learner` (its cut, head and, unless given, `model_meta` split) with the pretrained body loaded"
    kw = {} if splitter is None else dict(splitter=splitter)
    learn = vision_learner(dls, xresnet18_half, pretrained=False, normalize=False, metrics=accuracy, **kw)
    body = learn.model[0]
    sd = {k: v for k, v in torch.load(path, weights_only=True).items() if k in body.state_dict()}
    assert len(sd) == len(body.state_dict()), 'the pretrained weights do not fit fastai\'s body'
    body.load_state_dict(sd)
    return learn


def fastai_fine_tune(dls, path, E, lr):
    "fastai's default: vision_learner (3 groups from model_meta, fastai's head) and `fine_tune`"
    learn = _fastai_learner(dls, path)
    return learn, lambda: learn.fine_tune(E - 1, base_lr=lr, freeze_epochs=1, cbs=SkipValid())


def fastai_model_stages(dls, path, E, lr):
    "fastai's vision_learner model and head, split by fast_impl's `stage_splitter`, `fine_tune`"
    learn = _fastai_learner(dls, path, splitter=stage_splitter())
    return learn, lambda: learn.fine_tune(E - 1, base_lr=lr, freeze_epochs=1, cbs=SkipValid())


def _pretrained(dls, path):
    "fast_impl's Learner on the pretrained weights (own xresnet head, stage groups), unfrozen"
    learn = discriminative_learner(dls, xresnet18_half, pretrained=path, normalize=False, metrics=accuracy)
    learn.unfreeze()
    return learn


def stages_slice(dls, path, E, lr):
    "fast_impl: stage groups, `slice(lr/10, lr)` spread over them (fastai gives `slice(lr)`'s body lr/10)"
    learn = _pretrained(dls, path)
    return learn, lambda: learn.fit_one_cycle(E, slice(lr / 10, lr), cbs=SkipValid())


def stages_decay(dls, path, E, lr, decay=0.75):
    "fast_impl: stage groups, `layer_decay(lr, n_groups, 0.75)`"
    learn = _pretrained(dls, path)
    return learn, lambda: learn.fit_one_cycle(E, layer_decay(lr, len(learn.opt.param_lists), decay), cbs=SkipValid())


METHODS = {'from scratch': scratch, 'whole model, one LR': one_lr, 'fastai vision_learner + fine_tune': fastai_fine_tune,
           'fastai model, fast_impl stage groups + fine_tune': fastai_model_stages,
           'fast_impl stage groups + slice(lr/10, lr)': stages_slice,
           'fast_impl stage groups + layer decay 0.75': stages_decay}
BASELINES = list(METHODS)[:3]


def run(method, seed: int, path, n_per_class: int, E: int, lr: float, bs: int) -> tuple[float, float, int]:
    "Accuracy on the unlabelled digits 5-9, seconds and number of groups of one fine-tuning run"
    t = time.perf_counter()
    set_seed(seed)
    dls = digits_dls(range(5, 10), n_per_class=n_per_class, bs=bs, seed=seed)
    learn, fit = method(dls, path, E, lr)
    with learn.no_bar(), learn.no_logging():
        fit()
        acc = float(learn.validate()[1])
    return acc, time.perf_counter() - t, len(learn.opt.param_lists)


def tune(path, lrs: list[float], seeds, n_per_class: int, E: int, bs: int) -> tuple[dict, dict]:
    "Each method's base LR: the best mean accuracy over the tuning `seeds` (other labelled images than the evaluation's)"
    acc = {m: {lr: [] for lr in lrs} for m in METHODS}
    for seed in progress_bar(list(seeds)):
        for m, f in METHODS.items():
            for lr in lrs: acc[m][lr].append(run(f, seed, path, n_per_class, E, lr, bs)[0])
    return {m: max(lrs, key=lambda lr: np.mean(a[lr])) for m, a in acc.items()}, acc


def evaluate(path, lr: dict, seeds, n_per_class: int, E: int, bs: int) -> dict:
    "Accuracy, time and groups of every method on every evaluation seed, each at its own `lr`"
    res = {m: dict(acc=[], time=[], groups=0, lr=lr[m]) for m in METHODS}
    for seed in progress_bar(list(seeds)):
        for m, f in METHODS.items():
            acc, t, g = run(f, seed, path, n_per_class, E, lr[m], bs)
            res[m]['acc'].append(acc); res[m]['time'].append(t); res[m]['groups'] = g
    return res


def table(res: dict) -> str:
    "The markdown results table: mean ± std accuracy, time per run, groups, LR"
    best = max(np.mean(res[m]['acc']) for m in BASELINES)
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


def tuning_table(acc: dict) -> str:
    "Mean accuracy of every method at every LR of the grid, on the tuning seeds"
    lrs = list(next(iter(acc.values())))
    rows = [f"| {m} | " + ' | '.join(f'{np.mean(a[lr]) * 100:.1f}' for lr in lrs) + ' |' for m, a in acc.items()]
    return '\n'.join(['| method | ' + ' | '.join(f'lr {lr:g}' for lr in lrs) + ' |', '| --- |' + ' ---: |' * len(lrs), *rows])


def paired(res: dict) -> str:
    "Each fast_impl method against the best baseline (by mean), seed by seed: mean difference, its std error, wins"
    base = max(BASELINES, key=lambda m: np.mean(res[m]['acc']))
    b = np.array(res[base]['acc']) * 100
    lines = [f'| method | mean difference vs "{base}" (points) | std error | seeds won or tied | verdict |',
             '| --- | ---: | ---: | ---: | --- |']
    for m, r in res.items():
        if m in BASELINES: continue
        d = np.array(r['acc']) * 100 - b
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.
        verdict = 'better' if d.mean() > 2 * se else 'worse' if d.mean() < -2 * se else 'tie (within 2 std errors)'
        lines.append(f"| {m} | {d.mean():+.1f} | {se:.1f} | {int((d >= 0).sum())} of {len(d)} | {verdict} |")
    return '\n'.join(lines)


def _report(res, tuned, cfg: dict) -> str:
    import platform
    c = cfg
    tuning = (f"""Base LR per method: the best of {c['lrs']} by mean accuracy on {c['tune_seeds']} tuning seeds (other labelled
images than the evaluation seeds'), chosen before the evaluation runs:

{tuning_table(tuned)}
""" if tuned else f"Base LR {c['lrs'][0]:g} for every method (no tuning).\n")
    return f"""# Transfer: pretrain on digits 0-4, fine-tune on digits 5-9

Generated by `python bench/transfer.py` ({c['seeds']} evaluation seeds; {c['total'] / 60:.1f} minutes with {c['threads']}
torch threads on {platform.machine()}, torch {torch.__version__}; the CPU was shared with other jobs, so times are rough).

- Model: fastai `xresnet18` at half width (2.8M parameters), 32x32 images (the 8x8 digits upscaled, 3 channels),
  no normalisation, no augmentation.
- Pretraining: digits 0-4 (80% of them), {c['pretrain_epochs']} epochs of `fit_one_cycle` (lr 1e-2, bs 32); accuracy
  on the other 20%: {c['pre_acc']:.3f} ({c['t_pre']:.0f}s).
- Fine-tuning: digits 5-9, {c['n_per_class']} labelled images per class (drawn per seed; the same images for every
  method), accuracy on all the other images of 5-9 (about 850), measured once after training.
- Same budget for every method: {c['epochs']} epochs of one-cycle schedules, Adam, batch size {c['bs']}, fastai's
  default wd 0.01. `fine_tune` spends 1 of the {c['epochs']} epochs with the body frozen, then `slice(lr/200, lr/2)`
  (fastai's recipe). The two fast_impl methods on fast_impl's Learner train every group from the start:
  `slice(lr/10, lr)` spread geometrically over the stage groups, or `layer_decay(lr, n_groups, 0.75)`.
- Baselines: from scratch, the whole pretrained model at one LR, and fastai's `vision_learner` with its
  `model_meta` split (3 groups: stem, body, head) and `fine_tune`. "fastai model, fast_impl stage groups" is the
  same `vision_learner` model and recipe, with `splitter=stage_splitter()`: only the groups differ.

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
         out: str = str(OUT)):  # where to write the markdown results
    "Pretrain, tune each method's LR, run every method on every seed; print and write the results"
    torch.set_num_threads(threads)
    grid = [float(x) for x in lrs.split(',')]
    if quick: seeds, tune_seeds, epochs, pretrain_epochs, grid = min(seeds, 2), 1, 2, 1, grid[:2]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'pretrained.pth')
        pre_acc = pretrain(path, pretrain_epochs, 1e-2, 32)
        t_pre = time.perf_counter() - t0
        print(f'pretrained on digits 0-4: accuracy {pre_acc:.3f} ({t_pre:.0f}s)')
        if len(grid) > 1: lr, tuned = tune(path, grid, range(100, 100 + tune_seeds), n_per_class, epochs, bs)
        else: lr, tuned = {m: grid[0] for m in METHODS}, None
        res = evaluate(path, lr, range(seeds), n_per_class, epochs, bs)
    cfg = dict(seeds=seeds, tune_seeds=tune_seeds, lrs=grid, n_per_class=n_per_class, epochs=epochs, bs=bs,
               pretrain_epochs=pretrain_epochs, threads=threads, pre_acc=pre_acc, t_pre=t_pre,
               total=time.perf_counter() - t0)
    report = _report(res, tuned, cfg)
    print(report)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(report)
