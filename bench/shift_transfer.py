"""Shift benchmark on scikit-learn's digits (embedded, no download): which fine-tuning method, and which layer
groups, help under an input-level shift (corrupted digits, as CIFAR-10-C corrupts CIFAR-10) and under a label
shift (digits 0-4 -> 5-9)? Lee et al. (ICLR 2023, "Surgical Fine-Tuning") find that input-level shifts favour
tuning the first block and label shifts the last; Auto-RGN sets per-group rates from the gradients.

Per family (xresnet, ViT) one model is pretrained on clean digits 0-4 (80% of them). Tasks:
- corrupted digits 0-4: the pretraining's 20% held-out images, corrupted, are the test set; `n_per_class`
  labelled images per class come from the other 80%, corrupted the same way (a fixed corruption per image);
- label shift: digits 5-9, `n_per_class` labelled images per class, all the others to test.
Each method's base LR is tuned per shift type (input, label) on separate seeds; the methods:
bench/transfer_methods.py (`SHIFT_METHODS`). Results: bench/results/shift_transfer.md.

    python bench/shift_transfer.py --workers 2             # the full run (see the report for its time)
    python bench/shift_transfer.py --smoke                 # 2 seeds, 2 epochs, one severity: checks it runs
"""
from __future__ import annotations

import concurrent.futures as cf, functools, multiprocessing as mp, os, platform, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastcore.script import call_parse

from fast_impl.app.demo import paired, verdict
from transfer import tuning_table
from transfer_methods import FAMILIES, SHIFT_METHODS, per_seed, pretrain, run, table

RESULTS = Path(__file__).parent / 'results'
GRIDS = {'xresnet': '3e-3,1e-2,3e-2', 'vit': '3e-4,1e-3,3e-3'}  # as bench/transfer.py tuned each family
KINDS = ('noise', 'blur', 'contrast', 'elastic')
DEFAULT_KINDS = 'noise,blur,contrast'  # the full run's: elastic too would take it past an hour on 2 cores

# ---------------------------------------------------------------- corruptions (as CIFAR-10-C: 5 severities)


def corrupt(x: torch.Tensor, kind: str, severity: int, seed: int = 0) -> torch.Tensor:
    "Images `x` (n, c, h, w) in [0, 1] under corruption `kind` at `severity` 1-5, the same for the same seed"
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF
    s, g = severity - 1, torch.Generator().manual_seed(seed)
    if kind == 'noise':
        return (x + torch.randn(x.shape, generator=g) * (.08, .12, .18, .26, .38)[s]).clamp(0, 1)
    if kind == 'blur':
        sigma = (.6, 1., 1.5, 2., 3.)[s]
        return TF.gaussian_blur(x, [2 * int(np.ceil(3 * sigma)) + 1] * 2, [sigma, sigma])
    if kind == 'contrast':
        mean = x.mean((1, 2, 3), keepdim=True)
        return (x - mean) * (.4, .3, .2, .1, .05)[s] + mean
    if kind == 'elastic':
        torch.manual_seed(seed)  # torchvision draws the displacement fields from the global generator
        t = v2.ElasticTransform(alpha=(15., 25., 35., 45., 60.)[s], sigma=4.)
        return torch.stack([t(im) for im in x]).clamp(0, 1)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")


class _Get:
    "Index -> image or label of a tensor (picklable)"
    def __init__(self, t, image=False): self.t, self.image = t, image

    def __call__(self, i):
        from fastai.torch_core import TensorImage
        return TensorImage(self.t[i]) if self.image else int(self.t[i])


@functools.lru_cache(maxsize=None)
def _corrupted(kind: str, severity: int):
    "Digits 0-4 corrupted, their labels, and the pretraining's training / held-out indices"
    from fast_impl.fastai.data import digits_dls
    from fast_impl.images import digits_images
    x, y = digits_images(range(5))
    pre = digits_dls(range(5), bs=32, seed=0)  # the split `pretrain` used
    return corrupt(x, kind, severity), y, np.array(pre.train.items), np.array(pre.valid.items)


def task_dls(task: str, seed: int, n_per_class: int, bs: int):
    "DataLoaders of `task` ('label' or 'KIND-SEVERITY'): `n_per_class` labelled images per class for `seed`"
    from fastai.data.core import Datasets
    from fastai.data.transforms import Categorize
    from fast_impl.fastai.data import digits_dls
    from fast_impl.images import pick_per_class
    if task == 'label': return digits_dls(range(5, 10), n_per_class=n_per_class, bs=bs, seed=seed)
    kind, severity = task.rsplit('-', 1)
    x, y, train, valid = _corrupted(kind, int(severity))
    train = train[pick_per_class(y[train], n_per_class, seed)]
    ds = Datasets(range(len(y)), tfms=[[_Get(x, True)], [_Get(y), Categorize(vocab=list(range(5)))]],
                  splits=[sorted(train.tolist()), valid.tolist()])
    dls = ds.dataloaders(bs=bs, val_bs=64, num_workers=0)
    for dl in dls.loaders: dl.rng.seed(seed)
    return dls

# ---------------------------------------------------------------- running jobs (one torch thread each)


def keep_head(method):
    """`method` with the pretrained classifier kept (the corrupted digits have the pretraining's classes),
    where its model is the pretrained one (fastai's `vision_learner` builds its own head: it stays new)"""
    def with_head(dls, path, E, lr, arch):
        from fast_impl.archs import read_weights
        learn, fit = method(dls, path, E, lr, arch=arch)
        sd, own = read_weights(path), learn.model.state_dict()
        if sd.keys() == own.keys() and all(v.shape == own[k].shape for k, v in sd.items()):
            learn.model.load_state_dict(sd)
        return learn, fit
    return with_head


def _job(args) -> tuple[float, float, int]:
    "One fine-tuning run: (method, task, seed, lr, path, n_per_class, epochs, bs, family)"
    method, task, seed, lr, path, n, E, bs, family = args
    torch.set_num_threads(1)
    dls = lambda s, n_, b: task_dls(task, s, n_, b)
    m = SHIFT_METHODS[method]
    if task != 'label' and method != 'from scratch': m = keep_head(m)
    return run(m, seed, path, n, E, lr, bs, FAMILIES[family][0], dls=dls)


def run_all(jobs: list, workers: int) -> list:
    "Results of `jobs` in order, on `workers` processes (spawned: no forked OpenMP state)"
    if workers == 1: return [_job(j) for j in jobs]
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context('spawn')) as ex:
        return list(ex.map(_job, jobs, chunksize=1))


def tune(path, methods, tasks: dict, grid, seeds, n, E, bs, family, workers) -> tuple[dict, dict]:
    """Each method's LR per shift type (`tasks`: type -> the tasks its tuning seeds cycle through): the best
    mean accuracy on the tuning `seeds`"""
    lr, acc = {}, {}
    for kind, ts in tasks.items():
        jobs = [(m, ts[i % len(ts)], s, g, path, n, E, bs, family)
                for m in methods for g in grid for i, s in enumerate(seeds)]
        res = iter(run_all(jobs, workers))
        acc[kind] = {m: {g: [next(res)[0] for _ in seeds] for g in grid} for m in methods}
        lr[kind] = {m: max(grid, key=lambda g: np.mean(a[g])) for m, a in acc[kind].items()}
    return lr, acc


def evaluate(path, methods, lrs: dict, tasks: list, seeds, n, E, bs, family, workers) -> dict:
    "task -> method -> {acc, time, groups, lr} over the evaluation `seeds`"
    kind = lambda t: 'label' if t == 'label' else 'input'
    jobs = [(m, t, s, lrs[kind(t)][m], path, n, E, bs, family) for t in tasks for m in methods for s in seeds]
    res, out = iter(run_all(jobs, workers)), {}
    for t in tasks:
        out[t] = {}
        for m in methods:
            rs = [next(res) for _ in seeds]
            out[t][m] = dict(acc=[r[0] for r in rs], time=[r[1] for r in rs], groups=rs[0][2],
                             lr=lrs[kind(t)][m])
    return out

# ---------------------------------------------------------------- tables


def compare(res: dict, baselines: list[str]) -> tuple[str, dict]:
    """Each non-baseline method against the best baseline (by mean), seed by seed: (that baseline, method ->
    (mean difference in points, its std error, seeds won or tied, verdict))"""
    base = max((m for m in baselines if m in res), key=lambda m: np.mean(res[m]['acc']))
    b, out = np.array(res[base]['acc']) * 100, {}
    for m, r in res.items():
        if m in baselines: continue
        a = np.array(r['acc']) * 100
        d, se = paired(a, b)
        out[m] = (d, se, int((a >= b).sum()), verdict(d, se))
    return base, out


def matrix(res: dict, baselines: list[str]) -> str:
    "method x task: mean difference ± std error against each task's best baseline, and the verdict"
    tasks = list(res)
    cmp = {t: compare(res[t], baselines) for t in tasks}
    head = '| method | ' + ' | '.join(tasks) + ' |'
    lines = [head, '| --- |' + ' ---: |' * len(tasks),
             '| best baseline | ' + ' | '.join(f'{cmp[t][0]} ({np.mean(res[t][cmp[t][0]]["acc"]) * 100:.1f}%)'
                                             for t in tasks) + ' |']
    for m in cmp[tasks[0]][1]:
        cells = [f'{d:+.1f} ± {se:.1f} {v}' for d, se, _, v in (cmp[t][1][m] for t in tasks)]
        lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def first_vs_last(res: dict) -> tuple[str, list]:
    """Surgical first group minus surgical last group, paired by seed: per task, and over the corruption tasks
    (each seed's mean); the table and the (mean, se) of the input-shift pool and the label task"""
    f, l = 'surgical: first group only', 'surgical: last group only'
    d = {t: (np.array(r[f]['acc']) - np.array(r[l]['acc'])) * 100 for t, r in res.items()}
    inputs = [t for t in d if t != 'label']
    if inputs: d['all corruptions (per-seed mean)'] = np.mean([d[t] for t in inputs], axis=0)
    rows = ['| task | first - last (points) | std error | verdict |', '| --- | ---: | ---: | --- |']
    stats = {}
    for t, x in d.items():
        mean, se = paired(x, np.zeros_like(x))
        v = {'win': 'first better', 'worse': 'last better'}.get(verdict(mean, se), 'tie')
        rows.append(f'| {t} | {mean:+.1f} | {se:.1f} | {v} |')
        stats[t] = (mean, se, v)
    return '\n'.join(rows), stats


def finding(stats: dict) -> str:
    "Whether the paper's qualitative finding reproduces, in one sentence, from `first_vs_last`'s stats"
    pool, label = stats.get('all corruptions (per-seed mean)'), stats.get('label')
    if pool is None or label is None: return 'not measured (both shift types are needed)'
    early = pool[2] == 'first better'
    flips = label[2] == 'last better' or label[0] < pool[0] - 2 * np.hypot(label[1], pool[1])
    if early and flips:
        return ('reproduces: on corrupted inputs tuning the first group beats tuning the last beyond 2 std '
                'errors, and the label shift favours the last group relatively')
    if early: return 'partly: the first group wins on corrupted inputs; the label shift does not reverse it'
    return (f'does not reproduce here: on corrupted inputs first - last is {pool[0]:+.1f} ± {pool[1]:.1f} '
            f'points ({pool[2]}); on the label shift {label[0]:+.1f} ± {label[1]:.1f} ({label[2]})')

# ---------------------------------------------------------------- the report


def _setup(c: dict) -> str:
    return f"""- Models: fastai `xresnet18` at half width (6 stage groups) and a small timm ViT (`vit_digits`,
  0.7M parameters), 32x32 images (the 8x8 digits upscaled, 3 channels), no normalisation, no augmentation.
- Pretraining, once per family: clean digits 0-4 (80%), {c['pretrain_epochs']} epoch(s) of `fit_one_cycle`.
- Input-level shift: digits 0-4 under {', '.join(c['kinds'])} at severities {c['severities']} (of 5,
  CIFAR-10-C style; a fixed corruption per image); test set: the 20% the pretraining held out (180
  images), corrupted; {c['n_per_class']} labelled images per class from the other 80%, corrupted. Label
  shift: digits 5-9, {c['n_per_class']} labelled images per class, all the others (about 850) to test.
- Heads: on the corrupted digits (the pretraining's classes) every pretrained model keeps its pretrained
  classifier, as in the paper (fastai's `vision_learner` builds its own new head); on the label shift every
  method gets a new one, so "pretrained, no fine-tuning" there has a random head (a floor, not a baseline).
- Every method: {c['epochs']} epochs, Adam, batch size {c['bs']}, wd 0.01, one-cycle; scored once at the end.
  {c['tuning']}
- Baselines: {'; '.join(c['baselines'][:2])};
  {'; '.join(c['baselines'][2:])}. Surgical: only the first (stem) or the last (head) stage group
  trains (`learn.train_only`); Auto-RGN: stage groups, `fit_one_cycle(lr)` with `AutoRGN(per)`.
- Verdicts: paired by seed against the task's best baseline; "win" only where the mean difference exceeds two
  standard errors, "worse" below minus two, "tie" otherwise.
"""


def _family(f: str, r: dict, c: dict) -> str:
    "The report of one family: the summary matrix, the paper's check, tuning, per-task tables"
    fl, stats = first_vs_last(r['res'])
    tun = '\n\n'.join(f'{k} shift:\n\n{tuning_table(a)}' for k, a in r['tuned'].items()) if r['tuned'] else \
        'not tuned (one LR)'
    tasks = '\n\n'.join(f"### {t}\n\n{table(res, c['baselines'])}\n\nPer seed (accuracy %):\n\n"
                        f"{per_seed(res, range(c['seeds']))}" for t, res in r['res'].items())
    return f"""## {f}

Pretraining accuracy on the held-out clean digits 0-4: {r['pre_acc']:.3f}.

Against the best baseline (points, paired by seed; ± one standard error):

{matrix(r['res'], c['baselines'])}

The paper's finding (input-level shift -> early groups matter): surgical first group minus last group:

{fl}

Verdict: {finding(stats)}.

LR tuning (mean accuracy % on the tuning seeds):

{tun}

{tasks}
"""


def report(out: dict, c: dict) -> str:
    title = 'SMOKE RUN (checks the script runs end to end; the numbers are NOT results)' if c['smoke'] else \
        'Shift benchmark: input-level and label shifts'
    return f"""# {title}

Generated by `python bench/shift_transfer.py {c['argv']}` ({c['seeds']} evaluation seeds;
{c['total'] / 60:.1f} minutes on {c['workers']} worker process(es), one torch thread each,
{platform.machine()}, torch {torch.__version__}; {c['runs']} fine-tuning runs, {c['per_run']:.1f}s each on
average, pretraining included; the CPU was shared with other jobs, so times are rough).

{_setup(c)}
""" + '\n'.join(_family(f, r, c) for f, r in out.items())


def family(f: str, d: str, tasks: list, kinds: list, sevs: list, c: dict) -> tuple[dict, int]:
    "Pretrain family `f` (weights in folder `d`), tune each method's LR, evaluate every task; (results, runs)"
    arch, _, pre_lr = FAMILIES[f]
    methods = [m for m in SHIFT_METHODS if f != 'vit' or 'fastai' not in m]
    path, n, E, bs, w = os.path.join(d, f'{f}.pth'), c['n_per_class'], c['epochs'], c['bs'], c['workers']
    torch.set_num_threads(1)
    pre_acc = pretrain(path, c['pretrain_epochs'], pre_lr, 32, arch)
    grid = [float(x) for x in GRIDS[f].split(',')]
    lrs, tuned, runs = {k: {m: grid[1] for m in methods} for k in ('input', 'label')}, {}, 0
    if c['tune_seeds'] > 0:
        top = [f'{k}-{max(sevs)}' for k in kinds]
        lrs, tuned = tune(path, methods, {'input': top, 'label': ['label']}, grid,
                          range(100, 100 + c['tune_seeds']), n, E, bs, f, w)
        runs += len(methods) * len(grid) * c['tune_seeds'] * 2
    r = evaluate(path, methods, lrs, tasks, range(c['seeds']), n, E, bs, f, w)
    return dict(res=r, tuned=tuned, pre_acc=pre_acc), runs + len(methods) * len(tasks) * c['seeds']


def _tuning(c: dict, families: list[str]) -> str:
    "How the base LRs were chosen, for the report"
    grids = '; '.join(f'{f}: {GRIDS[f]}' for f in families)
    if not c['tune_seeds']: return f"Not tuned: the middle of the grid for every method ({grids})."
    return (f"Base LR per method and shift type (input, label): the best of the grid ({grids})\n"
            f"  on {c['tune_seeds']} tuning seeds (other labelled images; the input-shift seeds cycle\n"
            f"  through the corruptions at the highest severity).")


@call_parse
def main(seeds: int = 10,  # evaluation seeds (each draws other labelled images)
         tune_seeds: int = 2,  # tuning seeds (100, 101, ...) per shift type
         n_per_class: int = 10,  # labelled images per class
         epochs: int = 10,  # fine-tuning epochs of every method
         bs: int = 16,  # batch size
         pretrain_epochs: int = 8,  # pretraining epochs on clean digits 0-4
         kinds: str = DEFAULT_KINDS,  # corruptions (comma-separated): noise, blur, contrast, elastic
         severities: str = '3,5',  # corruption severities 1-5 (comma-separated)
         families: str = 'xresnet,vit',  # model families
         workers: int = 1,  # processes (one torch thread each)
         smoke: bool = False,  # 2 seeds, 2 epochs, severity 5, noise and blur, no tuning: checks it runs
         out: str = None):  # the markdown file (default: bench/results/shift_transfer[_smoke].md)
    "Pretrain each family, tune each method's LR per shift type, evaluate every task; write the report"
    argv = ' '.join(sys.argv[1:])
    if smoke: seeds, tune_seeds, epochs, pretrain_epochs, severities, kinds = 2, 0, 2, 1, '5', 'noise,blur'
    kinds, sevs, fams = kinds.split(','), [int(s) for s in severities.split(',')], families.split(',')
    tasks = [f'{k}-{s}' for s in sevs for k in kinds] + ['label']
    c = dict(baselines=list(SHIFT_METHODS)[:4], seeds=seeds, tune_seeds=tune_seeds, n_per_class=n_per_class,
             epochs=epochs, bs=bs, kinds=kinds, severities=sevs, pretrain_epochs=pretrain_epochs,
             workers=workers, smoke=smoke, argv=argv)
    t0, res, runs = time.perf_counter(), {}, 0
    with tempfile.TemporaryDirectory() as d:
        for f in fams:
            res[f], n = family(f, d, tasks, kinds, sevs, c)
            runs += n
            print(f'{f}: done ({(time.perf_counter() - t0) / 60:.1f} min)', flush=True)
    total = time.perf_counter() - t0
    c.update(tuning=_tuning(c, fams), total=total, runs=runs, per_run=total * workers / max(runs, 1))
    text = report(res, c)
    dest = Path(out) if out else RESULTS / ('shift_transfer_smoke.md' if smoke else 'shift_transfer.md')
    dest.write_text(text)
    print(text)
