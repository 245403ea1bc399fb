"Whole jobs behind the command line: train and compare archs (`fast-impl train`) and the demo (`fast-impl demo`)."
from __future__ import annotations

__all__ = ['image_folder_dls', 'train_archs', 'TrainResult', 'plot_curves']

import pathlib, time
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


def _fit(dls, arch, epochs: int, lr: float) -> TrainResult:
    from fastai.metrics import accuracy
    from .learner import discriminative_learner
    from .resolve import arch_name
    from .tree import num_params
    learn = discriminative_learner(dls, arch, metrics=accuracy)
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


def train_archs(archs: list, data=None, epochs: int = 3, lr: float = 3e-3, size: int = 32, bs: int = 64,
                out='fast_impl_train', seed: int = 0) -> list[TrainResult]:
    "Train each of `archs` from scratch on the same data (digits, or an image folder `data`); table and plot in `out`"
    if epochs < 1: raise ValueError(f"epochs must be at least 1, got {epochs}")
    if data: _check_folder(data)
    from fastai.torch_core import set_seed
    from .data import digits_dls
    out = pathlib.Path(out); out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, arch in enumerate(archs):
        set_seed(seed, reproducible=True)
        dls = image_folder_dls(data, size, bs, seed) if data else digits_dls(size=size, bs=bs, seed=seed)
        print(f'[{i + 1}/{len(archs)}] {arch}', flush=True)
        results.append(_fit(dls, arch, epochs, lr))
    df = results_df(results)
    df.to_csv(out / 'train_results.csv', index=False)
    plot_curves(results, out / 'train_curves.png')
    from .render import md_table
    print(md_table(df))
    print(f'results: {out / "train_results.csv"}\nplot:    {out / "train_curves.png"}')
    return results
