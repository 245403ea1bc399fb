"""`fast-impl train`: train archs on the same data and compare them (per-epoch table, best weights, results
table and plot). Every input is checked (`plan`) before fastai is imported or anything is written."""
from __future__ import annotations

__all__ = ['train_archs', 'TrainResult', 'HISTORY', 'results_df', 'history_df', 'plot_curves', 'data_norm',
           'plan_dls', 'plan_learner', 'group_lrs']

import pathlib, re, time, warnings
from dataclasses import dataclass, field

import numpy as np

from ..enums import Dataset, Norm, Schedule
from .plan import Plan, make_plan


@dataclass
class TrainResult:
    "One arch trained: its parameters, and the figures of the epoch whose weights were kept (best accuracy)"
    arch: str
    params: int
    train_loss: float
    train_accuracy: float
    valid_loss: float
    accuracy: float  # validation accuracy
    epoch: int  # counted from 1
    seconds: float  # the whole fit
    curves: dict = field(default_factory=dict)  # the columns of `HISTORY` but 'epoch': a value per epoch
    weights: pathlib.Path | None = None  # the kept weights (a state dict)


HISTORY = ['epoch', 'train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy', 'seconds']

# ---------------------------------------------------------------- data


def data_norm(plan: Plan) -> Norm:
    """The normalisation the DataLoaders get: the one asked for; else none with pretrained weights (the
    Learner adds the arch's); else seed 003's for CIFAR-10, none for digits and folders"""
    if plan.norm is not None: return plan.norm
    if plan.pretrained: return Norm.none
    return Norm.seed if plan.data is Dataset.cifar10 else Norm.none


def plan_dls(plan: Plan, bs: int):
    "`DataLoaders` of the plan's data (digits, CIFAR-10 or an image folder): its size, limit, normalisation"
    from ..fastai.data import add_norm, cifar10_dls, digits_dls, folder_dls
    from ..images import NORM_STATS
    norm, kw = data_norm(plan), dict(size=plan.size, bs=bs, seed=plan.seed, device=plan.device)
    if plan.data is Dataset.cifar10: return cifar10_dls(limit=plan.limit, norm=norm, **kw)
    if plan.data is not Dataset.digits: return folder_dls(plan.data, limit=plan.limit, norm=norm, **kw)
    dls = digits_dls(n_per_class=plan.limit, **kw)
    if NORM_STATS[norm]: add_norm(dls, NORM_STATS[norm])
    return dls


def _n_images(plan: Plan) -> tuple[int, int]:
    "Numbers of training and validation images of the plan's data (limit applied)"
    from ..fastai.data import cifar10_path
    from ..images import class_names, folder_items
    if plan.data is Dataset.digits:
        dls = plan_dls(plan, 64)
        return len(dls.train_ds), len(dls.valid_ds)
    path, valid = (cifar10_path(), 'test') if plan.data is Dataset.cifar10 else (plan.data, 'valid')
    vocab = class_names(path, 'train')
    count = lambda split: len(folder_items(path, (split,), vocab, plan.limit)) if vocab else 0
    return count('train'), count(valid)


def _batch_size(plan: Plan) -> int:
    "The plan's `bs`, or the number of training images when fewer (no epoch may run zero batches)"
    n_train, n_valid = _n_images(plan)
    if n_train < 2 or n_valid < 1:
        raise ValueError(f"{plan.data} has {n_train} training and {n_valid} validation images; train "
                         f"needs at least 2 training images (in train/CLASS/) and 1 for validation "
                         f"(in valid/CLASS/)")
    if n_train >= plan.bs: return plan.bs
    warnings.warn(f"only {n_train} training images, fewer than the batch size {plan.bs}: "
                  f"batches of {n_train} instead")
    return n_train

# ---------------------------------------------------------------- training


def _slug(arch) -> str:
    "A folder name for `arch`: its display name, anything but letters, digits, '.', '-' and '_' as '_'"
    from ..archs import arch_name
    return re.sub(r'[^\w.-]', '_', arch_name(arch))


def group_lrs(learn, plan: Plan):
    """The rate of each layer group: layer decay from the head's `lr`; a `slice(lo, hi)` spread geometrically;
    with pretrained weights and one rate, lr/100 (stem) to lr (head) as fastai's `fine_tune`; else one rate"""
    from ..lr import layer_decay, lr_spread
    lo, hi = (plan.lr.start, plan.lr.stop) if isinstance(plan.lr, slice) else (None, plan.lr)
    if plan.decay is not None: return layer_decay(hi, learn, plan.decay)
    if lo is None and plan.pretrained: lo = hi / 100
    return hi if lo is None else np.array(lr_spread(lo, hi, learn.n_groups))


def plan_learner(dls, arch, kw: dict, plan: Plan, folder: pathlib.Path):
    "The Learner of `arch` (built with `kw`) as `plan` says: groups, weights, normalisation, optimizer"
    from ..fastai.fit import train_learner
    return train_learner(dls, arch, folder, groups=plan.groups, pretrained=plan.pretrained,
                         normalize=plan.norm is None, opt=plan.opt, **kw)


def _fit(dls, arch, kw: dict, plan: Plan, title: str) -> TrainResult:
    "Train `arch` as `plan` says, printing `title` and the per-epoch table; save its history and best weights"
    from ..fastai.fit import plain_table
    folder = plan.out / _slug(arch)
    learn = plan_learner(dls, arch, kw, plan, folder)  # weights that do not fit fail here, before writing
    folder.mkdir(parents=True, exist_ok=True)
    print(title, flush=True)
    plain_table(learn)
    lrs, start = group_lrs(learn, plan), time.time()
    if plan.schedule is Schedule.one_cycle: learn.fit_one_cycle(plan.epochs, lrs)
    else: learn.fit(plan.epochs, lrs)
    res = _result(learn, arch, time.time() - start, folder / 'best.pth')
    history_df(res).to_csv(folder / 'history.csv', index=False)
    return res


def _result(learn, arch, seconds: float, weights: pathlib.Path) -> TrainResult:
    "The fit's record: per-epoch curves, and the figures of the best epoch (whose weights `KeepBest` kept)"
    from ..archs import arch_name
    from ..tree import num_params
    rec = learn.recorder
    curves = {k: [float(v[i]) for v in rec.values] for i, k in enumerate(HISTORY[1:5])}
    curves['seconds'] = [float(s) for s in rec.seconds]
    acc = np.array(curves['valid_accuracy'])
    best = int(np.nanargmax(acc)) if np.isfinite(acc).any() else len(acc) - 1  # the first best, as it keeps
    at = {k: v[best] for k, v in curves.items()}
    return TrainResult(arch=arch_name(arch), params=num_params(learn.model), train_loss=at['train_loss'],
                       train_accuracy=at['train_accuracy'], valid_loss=at['valid_loss'],
                       accuracy=at['valid_accuracy'], epoch=best + 1, seconds=seconds,
                       curves=curves, weights=weights if weights.is_file() else None)

# ---------------------------------------------------------------- results


def results_df(results: list[TrainResult]):
    "A DataFrame of `results`, a row per arch: the figures of its best epoch, and the time of the whole fit"
    import pandas as pd
    return pd.DataFrame([{'arch': r.arch, 'params': r.params, 'train_loss': round(r.train_loss, 4),
                          'train_accuracy': round(r.train_accuracy, 4), 'valid_loss': round(r.valid_loss, 4),
                          'accuracy': round(r.accuracy, 4), 'best_epoch': r.epoch,
                          'seconds': round(r.seconds, 1)} for r in results])


def history_df(result: TrainResult):
    "A DataFrame of `result`'s epochs: seed 003's training and validation loss and accuracy, and seconds"
    import pandas as pd
    n = len(result.curves['valid_loss'])
    return pd.DataFrame({'epoch': range(1, n + 1), **{k: result.curves[k] for k in HISTORY[1:]}})


def plot_curves(results: list[TrainResult], path):
    "Save loss and accuracy per epoch (training dashed, validation solid) of each result to `path` (PNG)"
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, r in enumerate(results):
        epochs, color = range(1, len(r.curves['valid_loss']) + 1), colors[i % len(colors)]
        for ax, what in zip(axes, ('loss', 'accuracy')):
            ax.plot(epochs, r.curves[f'train_{what}'], ls='--', color=color, alpha=0.6)
            ax.plot(epochs, r.curves[f'valid_{what}'], marker='o', color=color, label=r.arch)
    n = max((len(r.curves['valid_loss']) for r in results), default=1)
    for ax, what in zip(axes, ('loss', 'accuracy')):
        ax.set(title=f'{what} (training dashed, validation solid)', xlabel='epoch', xlim=(0.5, n + 0.5))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs 1, 2, ...; never 1.5
    axes[1].legend(fontsize='small')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def _report(results: list[TrainResult], out: pathlib.Path):
    "Write and print the results table and the plot"
    from ..render import md_table
    df = results_df(results)
    df.to_csv(out / 'train_results.csv', index=False)
    plot_curves(results, out / 'train_curves.png')
    print(md_table(df))
    print(f'results: {out / "train_results.csv"}\nplot:    {out / "train_curves.png"}\n'
          f'per arch: {out}/ARCH/history.csv (every epoch) and best.pth (the best epoch\'s weights)')


def train_archs(archs: list, data=None, epochs: int = 3, lr: float | slice = 3e-3, size: int = 32,
                bs: int = 64, out='fast_impl_train', seed: int = 0, limit: int | None = None, groups='stages',
                decay: float | None = None, pretrained: bool | str = False, norm: str | None = None,
                opt: str = 'adam', schedule: str = 'one_cycle', device: str | None = None
                ) -> list[TrainResult]:
    """Train each of `archs` on the same data and compare them: per epoch, seed 003's training and validation
    loss and accuracy and the time (the table, `out/ARCH/history.csv`); the best epoch's weights
    (`out/ARCH/best.pth`); a results table and a plot in `out`. Every input is checked, and each arch built
    for `size`, before anything is written.

    Args:
        archs: names (`'fast_impl:AlexNet'`, `'torchvision:googlenet'`, timm names), builders or classes.
        data: 'digits' (None), 'cifar10' (fastai's `untar_data(URLs.CIFAR)`) or an image folder with `train/`
            and `valid/` subfolders, one folder per class.
        lr: one rate, or `slice(lo, hi)` spread geometrically from the stem's group to the head's.
        size: image side; an arch that cannot take it is reported with the smallest size that works.
        limit: images per class (training and validation each) for a quick run; digits: training images.
        groups: layer groups for the rates: 'stages', 'blocks', a number of groups (`discriminative_learner`).
        decay: layer decay: the head's group gets `lr`, each earlier group `decay` times the next.
        pretrained: True for the registry's weights, or a weights file (a `best.pth` of an earlier run): every
            group trains, from lr/100 (stem) to lr (head) unless `lr` is a slice or `decay` is given.
        norm: a `Norm` name; None: the arch's statistics with pretrained weights, else seed 003's for CIFAR-10
            and none for digits and folders.
        opt: 'adam' (fastai's) or 'sgd' (momentum 0.9, seed 003).
        schedule: 'one_cycle' (fastai's) or 'constant' (the seeds' fixed rate).
        device: 'cpu', 'cuda', 'cuda:1', ...; None: fastai's default (the GPU when there is one).
    """
    plan = make_plan(archs, data=data, epochs=epochs, lr=lr, size=size, bs=bs, out=out, seed=seed,
                     limit=limit, groups=groups, decay=decay, pretrained=pretrained, norm=norm, opt=opt,
                     schedule=schedule, device=device)
    from ..fastai.fit import reproducible
    reproducible(seed)
    bs = _batch_size(plan)  # fails, or shrinks the batch, before `out` exists
    results = []
    for i, (arch, kw) in enumerate(zip(plan.archs, plan.kws)):
        reproducible(seed)
        results.append(_fit(plan_dls(plan, bs), arch, kw, plan, f'[{i + 1}/{len(plan.archs)}] {arch}'))
    _report(results, plan.out)
    return results
