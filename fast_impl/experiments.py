"Whole jobs behind the command line: train and compare archs (`fast-impl train`) and the demo (`fast-impl demo`)."
from __future__ import annotations

__all__ = ['train_archs', 'TrainResult', 'EpochRecorder', 'KeepBest', 'Dataset', 'Opt', 'Schedule',
           'smallest_size', 'image_folder_dls', 'results_df', 'history_df', 'plot_curves', 'plot_transfer',
           'demo']

import difflib, functools, pathlib, re, sys, tempfile, time, warnings
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from fastai.callback.tracker import SaveModelCallback, TrackerCallback
from fastai.learner import AvgLoss, Recorder
from fastcore.foundation import L

from .data import Norm, _norm

# ---------------------------------------------------------------- records and options


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


class Dataset(str, Enum):
    "The datasets `train_archs` knows by name; any other `data` is an image folder"
    digits = 'digits'    # scikit-learn's 8x8 digits, embedded (no download)
    cifar10 = 'cifar10'  # CIFAR-10 through fastai's `untar_data(URLs.CIFAR)`


class Opt(str, Enum):
    adam = 'adam'  # fastai's Adam (its defaults: betas 0.9, 0.99, weight decay 0.01)
    sgd = 'sgd'    # SGD with momentum 0.9 (seed 003)


class Schedule(str, Enum):
    one_cycle = 'one_cycle'  # fastai's `fit_one_cycle`
    constant = 'constant'    # one rate throughout, as the seeds train (`fit`)


def _enum(kind: type[Enum], v, what: str) -> Enum:
    "`v` as a member of `kind`; else a `ValueError` listing the valid names"
    try: return kind(v)
    except ValueError:
        raise ValueError(f"{what} must be one of {', '.join(m.value for m in kind)}; got {v!r}") from None


class EpochRecorder(Recorder):
    """fastai's `Recorder` with seed 003's columns: each epoch's mean training loss and accuracy (as the
    batches ran, in training mode) beside the validation loss and accuracy; epochs counted from 1; the
    seconds of each epoch in `seconds`"""
    def __init__(self, **kwargs):
        super().__init__(train_metrics=True, **kwargs)
        self.mean_loss = AvgLoss()

    @property
    def name(self) -> str: return 'recorder'  # it stands in for fastai's Recorder: `learn.recorder`

    @property
    def _train_mets(self):
        if getattr(self, 'cancel_train', False): return L()
        return L(self.smooth_loss, self.mean_loss) + self.metrics  # the smoothed loss feeds the progress bar

    def before_fit(self):
        super().before_fit()
        self.seconds = []

    def before_epoch(self):
        super().before_epoch()
        self.log = L(self.epoch + 1)

    def after_train(self): self.log += [_value(m) for m in self._train_mets[1:]]  # the mean, not the smoothed

    def after_epoch(self):
        self.seconds.append(time.time() - self.start_epoch)
        super().after_epoch()


class KeepBest(SaveModelCallback):
    "fastai's `SaveModelCallback` keeping the weights of the best validation accuracy; epochs counted from 1"
    def __init__(self, fname: str = 'best'): super().__init__(monitor='valid_accuracy', fname=fname)

    def after_epoch(self):
        TrackerCallback.after_epoch(self)
        if not self.new_best: return
        print(f'epoch {self.epoch + 1}: best valid_accuracy so far ({self.best:.4f}), weights saved',
              flush=True)
        self._save(self.fname)


def _value(metric):
    v = metric.value
    return v.item() if hasattr(v, 'item') else v

# ---------------------------------------------------------------- checks: data, sizes, device


def _check_out(out) -> pathlib.Path:
    "The output folder `out`, checked before anything is written: it may exist, but only as a folder"
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out {str(out)!r} is a file, not a folder; choose another --out")
    return out


def _check_folder(path) -> pathlib.Path:
    path = pathlib.Path(path)
    missing = [d for d in ('train', 'valid') if not (path / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"{path} needs train/ and valid/ subfolders (one folder per class); "
                                f"missing: {missing}")
    return path


def _check_data(data) -> Dataset | pathlib.Path:
    "`data` as a `Dataset` (None: the digits) or an image folder with train/ and valid/ subfolders"
    if data is None: return Dataset.digits
    if isinstance(data, Dataset) or data in [d.value for d in Dataset]: return Dataset(data)
    try: return _check_folder(data)
    except FileNotFoundError as e:
        names = [d.value for d in Dataset]
        close = difflib.get_close_matches(str(data), names, n=1) if not pathlib.Path(data).exists() else []
        hint = f"did you mean {close[0]!r}? " if close else ''
        raise FileNotFoundError(f"data {str(data)!r} is neither a dataset ({', '.join(names)}) nor an image "
                                f"folder: {hint}{e}") from None


def image_folder_dls(path, size: int = 64, bs: int = 32, seed: int = 0):
    "fastai `DataLoaders` of an image folder in the usual `train/` and `valid/` layout, a subfolder per class"
    from .data import folder_dls
    return folder_dls(_check_folder(path), size=size, bs=bs, seed=seed)


def _size_kwargs_at(arch, size: int) -> tuple[dict | None, Exception | None]:
    """Builder arguments with which `arch` takes `size`x`size` images: none, or the image size for models made
    for one size (timm's `img_size`, torchvision's `image_size`), from a forward pass on meta (no weights);
    None and the first error when neither works"""
    from .summary import ForwardError, layer_summary
    first = None
    for kw in ({}, {'img_size': size}, {'image_size': size}):
        try:
            layer_summary(arch, input_size=(1, 3, size, size), depth=0, **kw)
            return kw, None
        except (ForwardError, TypeError, ValueError, AssertionError, RuntimeError) as e: first = first or e
    return None, first


def smallest_size(arch, above: int = 7, top: int = 1024) -> int | None:
    """The smallest image side above `above` that `arch` takes (built for it where it can be), from forward
    passes on the meta device: doubling up to `top`, then bisection (a size that works is taken to keep
    working above, as with strides and pooling; the size returned was tried); None when none up to `top`"""
    works = lambda s: _size_kwargs_at(arch, s)[0] is not None
    lo, hi, s = above, None, above
    while hi is None and s < top:
        s = min(2 * max(s, 4), top)
        if works(s): hi = s
        else: lo = s
    if hi is None: return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if works(mid) else (mid, hi)
    return hi


def _size_kwargs(arch, size: int) -> dict:
    """Builder arguments with which `arch` takes `size`x`size` images (`_size_kwargs_at`); else a one-line
    `ValueError` naming the smallest size that works"""
    from .archs import arch_name, resolve
    resolve(arch)  # an unknown name fails here, as itself
    kw, err = _size_kwargs_at(arch, size)
    if kw is not None: return kw
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    least = smallest_size(arch, size)
    if least: fix = f"the smallest size it takes is {least}: use --size {least} or more"
    else: fix = "nor any size up to 1024; choose another arch"
    raise ValueError(f"{arch_name(arch)} cannot take {size}x{size} images ({msg}); {fix}")


def _check_device(device) -> str | None:
    "`device` as a device this machine has (None: fastai's default, the GPU when there is one)"
    if device is None: return None
    import torch
    try: dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:1', ...; got {device!r}") from None
    if dev.type == 'meta':
        raise ValueError("device 'meta' holds no data; training needs 'cpu' or a GPU ('cuda')")
    backend = getattr(torch, dev.type, None)
    ok = dev.type == 'cpu' or (callable(getattr(backend, 'is_available', None)) and backend.is_available())
    if not ok: raise ValueError(f"device {str(dev)!r} is not available on this machine; use 'cpu' or leave "
                                f"--device out (fastai's default: the GPU when there is one)")
    count = getattr(backend, 'device_count', lambda: 1)()
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"device {str(dev)!r} does not exist: this machine has {count} {dev.type} device(s)")
    return str(dev)


def _int(v, what: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{what} must be an int >= {lo}; got {v!r}")
    return v


def _check_lr(lr) -> float | slice:
    "`lr`: one rate, or `slice(lo, hi)` spread over the layer groups; each positive and finite"
    from .lr import check_lr, check_lrs
    if isinstance(lr, slice) and lr.start is None: lr = lr.stop
    return check_lrs(lr, 'lr') if isinstance(lr, slice) else check_lr(lr, 'lr')


def _check_weights(pretrained):
    "`pretrained`: True (the registry's weights), False, or a weights file that exists"
    from .archs import _load_file, check_pretrained
    check_pretrained(pretrained)
    if pretrained not in (True, False, None) and not pathlib.Path(pretrained).is_file():
        _load_file(pretrained)  # its error: a folder, or no such file
    return pretrained or False

# ---------------------------------------------------------------- the plan: every input, checked


@dataclass
class _Plan:
    "Every input of `train_archs`, checked; `kws[i]` the builder arguments that make `archs[i]` take `size`"
    archs: list
    kws: list
    data: Dataset | pathlib.Path
    epochs: int
    lr: float | slice
    decay: float | None
    groups: object
    pretrained: bool | str
    size: int
    bs: int
    limit: int | None
    norm: Norm | None  # None: the arch's with pretrained weights, else the data's own (`_data_norm`)
    opt: Opt
    schedule: Schedule
    device: str | None
    out: pathlib.Path
    seed: int


def _check_groups(archs: list, kws: list, groups):
    "Each arch, built on meta, splits into `groups` (the Learner's own check and message)"
    from .learner import _splitter
    from .archs import resolve
    for arch, kw in zip(archs, kws): _splitter(groups, resolve(arch, **kw))


def _plan(archs: list, **kw) -> _Plan:
    "The inputs of `train_archs` checked, cheapest first, before anything is read or written"
    from .lr import check_decay
    if not archs: raise ValueError("give at least one arch to train")
    for what, lo in (('epochs', 1), ('bs', 1), ('size', 8), ('seed', 0)): _int(kw[what], what, lo)
    if kw['limit'] is not None: _int(kw['limit'], 'limit', 1)
    kw['lr'] = _check_lr(kw['lr'])
    if kw['decay'] is not None:
        if isinstance(kw['lr'], slice): raise ValueError("give either lr=slice(lo, hi) or decay, not both")
        check_decay(kw['decay'])
    kw.update(data=_check_data(kw['data']), out=_check_out(kw['out']), device=_check_device(kw['device']),
              norm=None if kw['norm'] is None else _norm(kw['norm']), opt=_enum(Opt, kw['opt'], 'opt'),
              schedule=_enum(Schedule, kw['schedule'], 'schedule'),
              pretrained=_check_weights(kw['pretrained']))
    kws = [_size_kwargs(a, kw['size']) for a in archs]
    _check_groups(archs, kws, kw['groups'])
    return _Plan(archs=list(archs), kws=kws, **kw)

# ---------------------------------------------------------------- data


def _data_norm(plan: _Plan) -> Norm:
    """The normalisation the DataLoaders get: the one asked for; else none with pretrained weights (the
    Learner adds the arch's); else seed 003's for CIFAR-10, none for digits and folders"""
    if plan.norm is not None: return plan.norm
    if plan.pretrained: return Norm.none
    return Norm.seed if plan.data is Dataset.cifar10 else Norm.none


def _dls(plan: _Plan, bs: int):
    "`DataLoaders` of the plan's data (digits, CIFAR-10 or an image folder): its size, limit, normalisation"
    from .data import NORM_STATS, cifar10_dls, digits_dls, folder_dls
    norm, kw = _data_norm(plan), dict(size=plan.size, bs=bs, seed=plan.seed, device=plan.device)
    if plan.data is Dataset.cifar10: return cifar10_dls(limit=plan.limit, norm=norm, **kw)
    if plan.data is not Dataset.digits: return folder_dls(plan.data, limit=plan.limit, norm=norm, **kw)
    dls = digits_dls(n_per_class=plan.limit, **kw)
    if NORM_STATS[norm]:
        from .learner import _add_norm
        _add_norm(dls, NORM_STATS[norm])
    return dls


def _n_images(plan: _Plan) -> tuple[int, int]:
    "Numbers of training and validation images of the plan's data (limit applied)"
    from .data import _class_names, _folder_items, cifar10_path
    if plan.data is Dataset.digits:
        dls = _dls(plan, 64)
        return len(dls.train_ds), len(dls.valid_ds)
    path, valid = (cifar10_path(), 'test') if plan.data is Dataset.cifar10 else (plan.data, 'valid')
    vocab = _class_names(path, 'train')
    count = lambda split: len(_folder_items(path, (split,), vocab, plan.limit)) if vocab else 0
    return count('train'), count(valid)


def _batch_size(plan: _Plan) -> int:
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
    from .archs import arch_name
    return re.sub(r'[^\w.-]', '_', arch_name(arch))


def _group_lrs(learn, plan: _Plan):
    """The rate of each layer group: layer decay from the head's `lr`; a `slice(lo, hi)` spread geometrically;
    with pretrained weights and one rate, lr/100 (stem) to lr (head) as fastai's `fine_tune`; else one rate"""
    from .lr import layer_decay, lr_spread
    lo, hi = (plan.lr.start, plan.lr.stop) if isinstance(plan.lr, slice) else (None, plan.lr)
    if plan.decay is not None: return layer_decay(hi, learn, plan.decay)
    if lo is None and plan.pretrained: lo = hi / 100
    return hi if lo is None else np.array(lr_spread(lo, hi, learn.n_groups))


def _opt_func(opt: Opt):
    import fastai.optimizer as O
    return functools.partial(O.SGD, mom=0.9) if opt is Opt.sgd else O.Adam


def _learner(dls, arch, kw: dict, plan: _Plan, folder: pathlib.Path):
    "A discriminative Learner for `arch`: accuracy, seed 003's columns, the best weights kept in `folder`"
    from fastai.metrics import accuracy
    from .learner import discriminative_learner
    learn = discriminative_learner(dls, arch, groups=plan.groups, pretrained=plan.pretrained,
                                   normalize=plan.norm is None, metrics=accuracy,
                                   opt_func=_opt_func(plan.opt), path=folder, model_dir='.', **kw)
    learn.remove_cb(learn.recorder)
    learn.add_cbs([EpochRecorder(), KeepBest()])
    if plan.pretrained: learn.unfreeze()  # every group trains, each at its own rate
    return learn


class _Lines:
    "fastai's per-epoch table as plain lines, header first: for logs and pipes, which progress bars garble"
    def __init__(self, learn): self.learn, self.widths = learn, None

    def __call__(self, log):
        if self.widths is None:
            names = list(self.learn.recorder.metric_names)
            self.widths = [max(len(n), 9) for n in names]
            print(self._line(names))
        print(self._line([f'{v:.6f}' if isinstance(v, float) else str(v) for v in log]), flush=True)

    def _line(self, cells) -> str: return '  '.join(f'{c:<{w}}' for c, w in zip(cells, self.widths)).rstrip()


def _plain_table(learn):
    "Outside a terminal or notebook, no progress bars: the per-epoch table as plain lines"
    from fastai.callback.progress import ProgressCallback
    from fastprogress.fastprogress import IN_NOTEBOOK
    if IN_NOTEBOOK or sys.stdout.isatty(): return
    learn.remove_cb(ProgressCallback)
    learn.logger = _Lines(learn)


def _fit(dls, arch, kw: dict, plan: _Plan, title: str) -> TrainResult:
    "Train `arch` as `plan` says, printing `title` and the per-epoch table; save its history and best weights"
    folder = plan.out / _slug(arch)
    learn = _learner(dls, arch, kw, plan, folder)  # weights that do not fit fail here, before writing
    folder.mkdir(parents=True, exist_ok=True)
    print(title, flush=True)
    _plain_table(learn)
    lrs, start = _group_lrs(learn, plan), time.time()
    if plan.schedule is Schedule.one_cycle: learn.fit_one_cycle(plan.epochs, lrs)
    else: learn.fit(plan.epochs, lrs)
    res = _result(learn, arch, time.time() - start, folder / 'best.pth')
    history_df(res).to_csv(folder / 'history.csv', index=False)
    return res


def _result(learn, arch, seconds: float, weights: pathlib.Path) -> TrainResult:
    "The fit's record: per-epoch curves, and the figures of the best epoch (whose weights `KeepBest` kept)"
    from .archs import arch_name
    from .tree import num_params
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
    plan = _plan(archs, data=data, epochs=epochs, lr=lr, size=size, bs=bs, out=out, seed=seed, limit=limit,
                 groups=groups, decay=decay, pretrained=pretrained, norm=norm, opt=opt, schedule=schedule,
                 device=device)
    from fastai.torch_core import set_seed
    set_seed(seed, reproducible=True)
    bs = _batch_size(plan)  # fails, or shrinks the batch, before `out` exists
    results = []
    for i, (arch, kw) in enumerate(zip(plan.archs, plan.kws)):
        set_seed(seed, reproducible=True)
        results.append(_fit(_dls(plan, bs), arch, kw, plan, f'[{i + 1}/{len(plan.archs)}] {arch}'))
    _report(results, plan.out)
    return results


def _report(results: list[TrainResult], out: pathlib.Path):
    "Write and print the results table and the plot"
    from .render import md_table
    df = results_df(results)
    df.to_csv(out / 'train_results.csv', index=False)
    plot_curves(results, out / 'train_curves.png')
    print(md_table(df))
    print(f'results: {out / "train_results.csv"}\nplot:    {out / "train_curves.png"}\n'
          f'per arch: {out}/ARCH/history.csv (every epoch) and best.pth (the best epoch\'s weights)')


def plot_transfer(res: dict, path):
    "Save a bar chart of each method's accuracy (mean, std, and every seed as a dot) to `path`; returns the figure"
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    names = list(res)
    accs = [np.array(res[m]['acc']) * 100 for m in names]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(names) + 1.2))
    colors = ['tab:gray' if 'fast_impl stage groups +' not in m or 'fine_tune' in m else 'tab:blue' for m in names]
    ax.barh(range(len(names)), [a.mean() for a in accs], xerr=[a.std() for a in accs], color=colors, alpha=0.75)
    for i, a in enumerate(accs): ax.plot(a, [i] * len(a), 'k.', ms=4)
    ax.set_yticks(range(len(names)), names, fontsize='small')
    ax.invert_yaxis()
    lo = min(a.min() for a in accs)
    ax.set(xlim=(max(0, lo - 5), 100), xlabel='accuracy on the unlabelled digits 5-9 (%)',
           title='fine-tuning from digits 0-4 to 5-9, 10 labelled images per class')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def demo(out='demo_out', seeds: int = 5, quick: bool = False) -> dict:
    "The main job on the embedded digits: summary, layer groups with LRs, fine-tuning against the baselines, plot"
    import torch
    from . import transfer as T
    from .learner import layer_decay
    from .render import md_table
    from .summary import layer_summary
    from .summary import arch_summary
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an int >= 1 (repeats of each method); got {seeds!r}")
    out = _check_out(out); out.mkdir(parents=True, exist_ok=True)
    epochs, pre_epochs, seeds = (2, 1, 1) if quick else (10, 8, seeds)
    torch.set_num_threads(1)  # tiny models gain little from more; on a busy machine 2 threads ran 10x slower
    print('fast_impl demo: transfer learning on scikit-learn digits (embedded, no download)\n')
    print('1. The model: fastai xresnet18 at half width (built on the meta device, no weights)\n')
    print(arch_summary(T.xresnet18_half, verbose=False))
    s = layer_summary(T.xresnet18_half, input_size=(1, 3, 32, 32), depth=0, n_out=5)
    print(f'{s.total_params:,} parameters, {s.total_mult_adds / 1e6:.1f}M mult-adds per 32x32 image\n')
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / 'pretrained.pth'
        print(f'2. Pretraining on digits 0-4 ({pre_epochs} epoch{"s" * (pre_epochs > 1)}) ...', flush=True)
        print(f'   held-out accuracy {T.pretrain(path, pre_epochs, 1e-2, 32):.3f}\n')
        learn = T._pretrained(T.digits_dls(range(5, 10), n_per_class=10, bs=16, seed=0), path)
        learn.create_opt()
        learn.opt.set_hypers(lr=layer_decay(1e-2, learn, 0.75))
        print('3. Its layer groups (fast_impl stage groups), with layer-decay learning rates 0.75:\n')
        print(f'{learn.show_groups()}\n')
        print(f'4. Fine-tuning on digits 5-9 from 10 labelled images per class: {len(T.TUNED_LRS)} methods x '
              f'{seeds} seeds, {epochs} epochs each', flush=True)
        res = T.evaluate(path, T.TUNED_LRS, range(seeds), 10, epochs, 16)
    table = T.table(res)
    (out / 'results.md').write_text(f'# fast_impl demo: digits 0-4 -> 5-9 ({seeds} seeds)\n\n{table}\n')
    plot_transfer(res, out / 'transfer.png')
    print(f'\n{table}\n\nresults table: {out / "results.md"}\nplot written to: {out / "transfer.png"}')
    return res
