"Learning rates per layer group, checked: layer decay and fastai's LR forms (no fastai import: a light CLI)."
from __future__ import annotations

__all__ = ['check_lr', 'check_lrs', 'check_decay', 'lr_spread', 'layer_decay', 'n_groups_of']

import math, numbers, warnings

import numpy as np


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


def lr_spread(lo: float, hi: float, n: int) -> list[float]:
    "`n` rates from `lo` (stem) to `hi` (head), geometric as fastai spreads `slice(lo, hi)`; one group: `hi`"
    lo, hi = check_lr(lo, 'lo'), check_lr(hi, 'hi')
    if n == 1: return [float(hi)]
    return [float(x) for x in np.geomspace(lo, hi, n)]


def n_groups_of(n_groups) -> int:
    "`n_groups` as a positive int: an int, or anything with an `n_groups` attribute (a fastai `Learner`)"
    n = getattr(n_groups, 'n_groups', n_groups)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n_groups must be a positive int or a Learner (layer_decay(lr, learn)); "
                         f"got {n_groups!r:.80}")
    return int(n)


def check_decay(decay, none_ok: bool = False) -> float | None:
    "`decay` as a float in (0, 1] (or None, where `none_ok`: rates from lr/10 to lr); else a `ValueError`"
    if decay is None and none_ok: return None
    if isinstance(decay, numbers.Real) and not isinstance(decay, bool) and 0 < decay <= 1: return float(decay)
    alt = ", or None for rates from lr/10 to lr" if none_ok else ''
    raise ValueError(f"decay must be in (0, 1] (1 means one LR for all groups){alt}; got {decay!r}")


def layer_decay(lr_max: float, n_groups, decay: float = 0.75) -> np.ndarray:
    """Per-group learning rates: the head (last group) gets `lr_max`, each earlier group `decay` times the
    next; `n_groups` is a number or a `Learner` (its `n_groups`), so it works before the first fit"""
    lr_max, n, decay = check_lr(lr_max, 'lr_max'), n_groups_of(n_groups), check_decay(decay)
    return lr_max * decay ** np.arange(n - 1, -1, -1, dtype=float)
