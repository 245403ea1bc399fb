"Argument checks, one home for each kind: counts, rates, decay, weight decay, devices; one clear line each."
from __future__ import annotations

__all__ = ['check_count', 'check_lr', 'check_lrs', 'check_decay', 'check_wd', 'check_device',
           'check_indices']

import math, numbers, warnings

import numpy as np
import torch


def check_count(v, what: str, lo: int = 1) -> int:
    "`v` as an int when it is a whole number >= `lo` (steps, epochs, groups, sizes); else a `ValueError`"
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{what} must be an int >= {lo}; got {v!r}")
    return int(v)


def check_lr(lr, what: str = 'lr') -> float:
    "`lr` as a float when it is a positive, finite number; else a `ValueError` naming `what`"
    ok = isinstance(lr, numbers.Real) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0
    if not ok: raise ValueError(f"{what} must be a positive, finite number such as 1e-3; got {lr!r}")
    return float(lr)


def check_lrs(lr, what: str = 'lr'):
    """`lr` as fastai takes it, checked: a number, `slice(hi)`, `slice(lo, hi)` or one rate per group, each
    positive and finite (else `ValueError`); a reversed `slice(lo, hi)` warns (the stem would get more)"""
    if lr is None: return lr
    if isinstance(lr, slice):
        hi = check_lr(lr.stop, f'{what} slice end')
        if lr.start is not None and check_lr(lr.start, f'{what} slice start') > hi:
            warnings.warn(f"{what} slice({lr.start:g}, {hi:g}) is reversed: the stem gets the higher rate; "
                          f"write slice({hi:g}, {lr.start:g}) for the usual order", stacklevel=3)
        return lr
    if isinstance(lr, (list, tuple, np.ndarray)):
        for i, x in enumerate(np.asarray(lr, dtype=object).ravel()): check_lr(x, f'{what}[{i}]')
        return lr
    return check_lr(lr, what)


def check_decay(decay, none_ok: bool = False) -> float | None:
    "`decay` as a float in (0, 1] (or None, where `none_ok`: rates from lr/10 to lr); else a `ValueError`"
    if decay is None and none_ok: return None
    if isinstance(decay, numbers.Real) and not isinstance(decay, bool) and 0 < decay <= 1: return float(decay)
    alt = ", or None for rates from lr/10 to lr" if none_ok else ''
    raise ValueError(f"decay must be in (0, 1] (1 means one LR for all groups){alt}; got {decay!r}")


def check_wd(wd) -> float:
    "`wd` as a float when it is a finite weight decay >= 0; else a `ValueError`"
    ok = isinstance(wd, numbers.Real) and not isinstance(wd, bool) and math.isfinite(wd) and wd >= 0
    if not ok: raise ValueError(f"wd must be a finite weight decay >= 0 such as 0.05; got {wd!r}")
    return float(wd)


def check_device(device, meta: bool = True) -> torch.device:
    """`device` as a `torch.device` this machine has; `meta=False` where real data is needed (training).
    Else one `ValueError` naming the valid devices"""
    valid = "'meta', 'cpu' or 'cuda:0'" if meta else "'cpu', 'cuda' or 'cuda:1'"
    try: dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as {valid}; got {device!r}") from None
    if dev.type == 'meta' and not meta:
        raise ValueError("device 'meta' holds no data; training needs 'cpu' or a GPU ('cuda')")
    if dev.type in ('cpu', 'meta'): return dev
    backend = getattr(torch, dev.type, None)
    if not (callable(getattr(backend, 'is_available', None)) and backend.is_available()):
        use = "'meta' (no weights) or 'cpu'" if meta else "'cpu'"
        raise ValueError(f"device {str(dev)!r} is not available on this machine; use {use}")
    count = getattr(backend, 'device_count', lambda: 1)()
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"device {str(dev)!r} does not exist: this machine has {count} {dev.type} device(s)")
    return dev


def check_indices(v, n: int, what: str = 'groups') -> list[int]:
    """`v` (an index or a list of them, negative from the end) as sorted indices into `n` items, each once;
    else a `ValueError` naming the valid range"""
    items = [v] if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v
    ok = isinstance(items, (list, tuple, range)) and len(items) > 0 and all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) and -n <= i < n for i in items)
    if not ok:
        raise ValueError(f"{what} must be a group index or a non-empty list of them, each in 0..{n - 1} "
                         f"(or -{n}..-1 from the head); got {v!r}")
    return sorted({int(i) % n for i in items})
