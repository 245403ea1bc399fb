"Whole jobs behind the command line: train and compare archs (`fast-impl train`) and the demo (`fast-impl demo`)."
from __future__ import annotations

__all__ = ['image_folder_dls', 'train_archs', 'TrainResult', 'plot_curves', 'plot_transfer', 'demo']

import pathlib, tempfile, time, warnings
from dataclasses import dataclass, field


@dataclass
class TrainResult:
    "One arch trained: its parameters, final losses and accuracy, time, and the per-epoch curves"
    arch: str
    params: int
    train_loss: float
    valid_loss: float
    accuracy: float
    seconds: float
    curves: dict = field(default_factory=dict)  # 'train_loss', 'valid_loss', 'accuracy': one value per epoch


def _check_out(out) -> pathlib.Path:
    "The output folder `out`, checked before anything is written: it may exist, but only as a folder"
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out {str(out)!r} is a file, not a folder; choose another --out")
    return out


def _check_folder(path) -> pathlib.Path:
    path = pathlib.Path(path)
    missing = [d for d in ('train', 'valid') if not (path / d).is_dir()]
    if missing: raise FileNotFoundError(f"{path} needs train/ and valid/ subfolders (one folder per class); missing: {missing}")
    return path


def image_folder_dls(path, size: int = 64, bs: int = 32, seed: int = 0):
    "fastai `DataLoaders` from an image folder in the usual `train/` and `valid/` layout, one subfolder per class"
    path = _check_folder(path)
    from fastai.vision.data import ImageDataLoaders
    from fastai.vision.augment import Resize
    return ImageDataLoaders.from_folder(path, train='train', valid='valid', item_tfms=Resize(size), bs=bs, seed=seed)


def _size_kwargs(arch, size: int) -> dict:
    """Builder arguments with which `arch` takes `size`x`size` images: none, or the image size for models made
    for one size (timm's `img_size`, torchvision's `image_size`); a one-line `ValueError` if neither works"""
    from .resolve import arch_name, resolve
    from .stats import ForwardError, layer_summary
    resolve(arch)  # an unknown name fails here, as itself
    first = None
    for kw in ({}, {'img_size': size}, {'image_size': size}):
        try:
            layer_summary(arch, input_size=(1, 3, size, size), depth=0, **kw)  # one pass on meta: no weights
            return kw
        except (ForwardError, TypeError, ValueError, AssertionError) as e: first = first or e
    msg = str(first).splitlines()[0] if str(first) else type(first).__name__
    raise ValueError(f"{arch_name(arch)} cannot take {size}x{size} images, nor be built for them ({msg}); "
                     f"choose another --size (the size it is made for, e.g. 224)")


def _fit(dls, arch, epochs: int, lr: float, kw: dict) -> TrainResult:
    from fastai.metrics import accuracy
    from .learner import discriminative_learner
    from .resolve import arch_name
    from .tree import num_params
    learn = discriminative_learner(dls, arch, metrics=accuracy, **kw)
    start = time.time()
    learn.fit_one_cycle(epochs, lr)
    vals = [list(map(float, v)) for v in learn.recorder.values]  # train_loss, valid_loss, accuracy per epoch
    curves = {k: [v[i] for v in vals] for i, k in enumerate(['train_loss', 'valid_loss', 'accuracy'])}
    return TrainResult(arch_name(arch), num_params(learn.model), *vals[-1], time.time() - start, curves)


def results_df(results: list[TrainResult]):
    "A DataFrame of `results`, one row per arch"
    import pandas as pd
    return pd.DataFrame([{'arch': r.arch, 'params': r.params, 'train_loss': round(r.train_loss, 4),
                          'valid_loss': round(r.valid_loss, 4), 'accuracy': round(r.accuracy, 4),
                          'seconds': round(r.seconds, 1)} for r in results])


def plot_curves(results: list[TrainResult], path):
    "Save validation loss and accuracy per epoch of each result to `path` (PNG); returns the figure"
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for r in results:
        epochs = range(1, len(r.curves['valid_loss']) + 1)
        ax1.plot(epochs, r.curves['valid_loss'], marker='o', label=r.arch)
        ax2.plot(epochs, r.curves['accuracy'], marker='o', label=r.arch)
    ax1.set(title='validation loss', xlabel='epoch'); ax2.set(title='validation accuracy', xlabel='epoch')
    ax2.legend(fontsize='small')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def _check_train(archs: list, data, epochs: int, lr: float, size: int, bs: int, out) -> list[dict]:
    "Check every input of `train_archs` before anything is written; returns each arch's builder arguments"
    from .lr import check_lr
    if not archs: raise ValueError("give at least one arch to train")
    for what, v, lo in (('epochs', epochs, 1), ('bs', bs, 1), ('size', size, 8)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{what} must be an int >= {lo}; got {v!r}")
    check_lr(lr, 'lr')
    if data: _check_folder(data)
    _check_out(out)
    return [_size_kwargs(a, size) for a in archs]


def _dls(data, size: int, bs: int, seed: int):
    "`DataLoaders` of the image folder `data`, or of the digits when `data` is None"
    from .data import digits_dls
    return image_folder_dls(data, size, bs, seed) if data else digits_dls(size=size, bs=bs, seed=seed)


def _n_images(data, size: int, seed: int) -> tuple[int, int]:
    "Numbers of training and validation images in the image folder `data` (or in the digits)"
    if not data:
        dls = _dls(None, size, 64, seed)
        return len(dls.train_ds), len(dls.valid_ds)
    from fastai.data.transforms import get_image_files
    return tuple(len(get_image_files(pathlib.Path(data) / d)) for d in ('train', 'valid'))


def _batch_size(data, size: int, bs: int, seed: int) -> int:
    "`bs`, or the number of training images when fewer (no epoch may run zero batches); checks the data"
    n_train, n_valid = _n_images(data, size, seed)
    if n_train < 2 or n_valid < 1:
        raise ValueError(f"{data} has {n_train} training and {n_valid} validation images; train needs at "
                         f"least 2 training images (in train/CLASS/) and 1 for validation (in valid/CLASS/)")
    if n_train >= bs: return bs
    warnings.warn(f"only {n_train} training images, fewer than the batch size {bs}: "
                  f"batches of {n_train} instead")
    return n_train


def train_archs(archs: list, data=None, epochs: int = 3, lr: float = 3e-3, size: int = 32, bs: int = 64,
                out='fast_impl_train', seed: int = 0) -> list[TrainResult]:
    """Train each of `archs` from scratch on the same data (digits, or an image folder `data`); table and
    plot in `out`. Every input is checked, and each arch built for `size`, before anything is written"""
    kws = _check_train(archs, data, epochs, lr, size, bs, out)
    from fastai.torch_core import set_seed
    set_seed(seed, reproducible=True)
    bs = _batch_size(data, size, bs, seed)  # fails, or shrinks the batch, before `out` exists
    out = pathlib.Path(out); out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (arch, kw) in enumerate(zip(archs, kws)):
        set_seed(seed, reproducible=True)
        dls = _dls(data, size, bs, seed)
        print(f'[{i + 1}/{len(archs)}] {arch}', flush=True)
        results.append(_fit(dls, arch, epochs, lr, kw))
    df = results_df(results)
    df.to_csv(out / 'train_results.csv', index=False)
    plot_curves(results, out / 'train_curves.png')
    from .render import md_table
    print(md_table(df))
    print(f'results: {out / "train_results.csv"}\nplot:    {out / "train_curves.png"}')
    return results


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
    from .stats import layer_summary
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
        print(f'4. Fine-tuning on digits 5-9 from 10 labelled images per class: {len(T.METHODS)} methods x '
              f'{seeds} seeds, {epochs} epochs each', flush=True)
        res = T.evaluate(path, T.TUNED_LRS, range(seeds), 10, epochs, 16)
    table = T.table(res)
    (out / 'results.md').write_text(f'# fast_impl demo: digits 0-4 -> 5-9 ({seeds} seeds)\n\n{table}\n')
    plot_transfer(res, out / 'transfer.png')
    print(f'\n{table}\n\nresults table: {out / "results.md"}\nplot written to: {out / "transfer.png"}')
    return res
