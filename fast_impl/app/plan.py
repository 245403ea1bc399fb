"""The inputs of the training job, checked cheapest first before anything is read, written or trained (and
before fastai is imported): data, output folder, numbers, rates, device, choices, weights, and each arch built
once on the meta device, for the image size, and split into its layer groups."""
from __future__ import annotations

__all__ = ['Plan', 'make_plan', 'check_out', 'check_data', 'size_kwargs', 'smallest_size']

import difflib, pathlib
from dataclasses import dataclass

from ..enums import Dataset, Norm, Opt, Schedule, choice, values


def check_out(out) -> pathlib.Path:
    "The output folder `out`, checked before anything is written: it may exist, but only as a folder"
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out {str(out)!r} is a file, not a folder; choose another --out")
    return out


def _check_folder(path) -> pathlib.Path:
    "`path` when it has train/ and valid/ subfolders; else a `FileNotFoundError` naming the missing ones"
    path = pathlib.Path(path)
    missing = [d for d in ('train', 'valid') if not (path / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"{path} needs train/ and valid/ subfolders (one folder per class); "
                                f"missing: {missing}")
    return path


def check_data(data) -> Dataset | pathlib.Path:
    "`data` as a `Dataset` (None: the digits) or an image folder with train/ and valid/ subfolders"
    if data is None: return Dataset.digits
    if isinstance(data, Dataset) or data in values(Dataset): return Dataset(data)
    try: return _check_folder(data)
    except FileNotFoundError as e:
        names = values(Dataset)
        close = difflib.get_close_matches(str(data), names, n=1) if not pathlib.Path(data).exists() else []
        hint = f"did you mean {close[0]!r}? " if close else ''
        raise FileNotFoundError(f"data {str(data)!r} is neither a dataset ({', '.join(names)}) nor an image "
                                f"folder: {hint}{e}") from None

# ---------------------------------------------------------------- each arch, built once on meta for the size


def _built_for(arch, size: int):
    """(builder arguments, `arch` built on meta with them) with which it takes `size`x`size` images: none, or
    the image size for models made for one size (timm's `img_size`, torchvision's `image_size`), from a
    forward pass on meta (no weights); (None, the first error) when neither works. `arch` itself failing to
    build (an unknown name) raises"""
    from ..archs import resolve
    from ..summary import ForwardError, layer_summary
    first = None
    for kw in ({}, {'img_size': size}, {'image_size': size}):
        try: model = resolve(arch, **kw)
        except (TypeError, ValueError, AssertionError, RuntimeError) as e:
            if not kw: raise  # the arch itself does not build (an unknown name): its own error
            first = first or e
            continue
        try: layer_summary(model, input_size=(1, 3, size, size), depth=0)
        except (ForwardError, TypeError, ValueError, AssertionError, RuntimeError) as e: first = first or e
        else: return kw, model
    return None, first


def smallest_size(arch, above: int = 7, top: int = 1024) -> int | None:
    """The smallest image side above `above` that `arch` takes (built for it where it can be), from forward
    passes on the meta device: doubling up to `top`, then bisection (a size that works is taken to keep
    working above, as with strides and pooling; the size returned was tried); None when none up to `top`"""
    works = lambda s: _built_for(arch, s)[0] is not None
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


def _for_size(arch, size: int):
    """(builder arguments, model on meta) with which `arch` takes `size`x`size` images (`_built_for`); else a
    one-line `ValueError` naming the smallest size that works"""
    from ..archs import arch_name
    kw, got = _built_for(arch, size)
    if kw is not None: return kw, got
    msg = str(got).splitlines()[0] if str(got) else type(got).__name__
    least = smallest_size(arch, size)
    if least: fix = f"the smallest size it takes is {least}: use --size {least} or more"
    else: fix = "nor any size up to 1024; choose another arch"
    raise ValueError(f"{arch_name(arch)} cannot take {size}x{size} images ({msg}); {fix}")


def size_kwargs(arch, size: int) -> dict:
    "Builder arguments with which `arch` takes `size`x`size` images; else a `ValueError` (the least size)"
    return _for_size(arch, size)[0]

# ---------------------------------------------------------------- the plan


@dataclass
class Plan:
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
    norm: Norm | None  # None: the arch's with pretrained weights, else the data's own (`train.data_norm`)
    opt: Opt
    schedule: Schedule
    device: str | None
    out: pathlib.Path
    seed: int


def _check_lr(lr) -> float | slice:
    "`lr`: one rate, or `slice(lo, hi)` spread over the layer groups; each positive and finite"
    from ..checks import check_lr, check_lrs
    if isinstance(lr, slice) and lr.start is None: lr = lr.stop
    return check_lrs(lr, 'lr') if isinstance(lr, slice) else check_lr(lr, 'lr')


def _check_weights(pretrained):
    "`pretrained`: True (the registry's weights), False, or a weights file that exists"
    from ..archs import check_pretrained, read_weights
    check_pretrained(pretrained)
    if pretrained not in (True, False, None) and not pathlib.Path(pretrained).is_file():
        read_weights(pretrained)  # its error: a folder, or no such file
    return pretrained or False


def _check_numbers(kw: dict):
    "The whole numbers and rates of the plan `kw`, checked in place"
    from ..checks import check_count, check_decay
    for what, lo in (('epochs', 1), ('bs', 1), ('size', 8), ('seed', 0)): check_count(kw[what], what, lo)
    if kw['limit'] is not None: check_count(kw['limit'], 'limit')
    kw['lr'] = _check_lr(kw['lr'])
    if kw['decay'] is not None:
        if isinstance(kw['lr'], slice): raise ValueError("give either lr=slice(lo, hi) or decay, not both")
        check_decay(kw['decay'])


def make_plan(archs: list, **kw) -> Plan:
    """The inputs of `train_archs` checked, cheapest first, before anything is read or written; each arch
    built once on meta, for the size, and split into `groups` (the Learner's own check and message)"""
    from ..checks import check_device
    from ..split import named_groups
    if not archs: raise ValueError("give at least one arch to train")
    _check_numbers(kw)
    device = None if kw['device'] is None else str(check_device(kw['device'], meta=False))
    kw.update(data=check_data(kw['data']), out=check_out(kw['out']), device=device,
              norm=None if kw['norm'] is None else choice(Norm, kw['norm'], 'norm'),
              opt=choice(Opt, kw['opt'], 'opt'), schedule=choice(Schedule, kw['schedule'], 'schedule'),
              pretrained=_check_weights(kw['pretrained']))
    built = [_for_size(a, kw['size']) for a in archs]
    for _, model in built: named_groups(model, kw['groups'])
    return Plan(archs=list(archs), kws=[k for k, _ in built], **kw)
