"Learning rates per layer group, checked: layer decay and fastai's LR forms (no fastai import: a light CLI)."
from __future__ import annotations

__all__ = ['check_lr', 'check_lrs', 'check_decay', 'lr_spread', 'layer_decay', 'n_groups_of']

import numpy as np

from .checks import check_count, check_decay, check_lr, check_lrs  # noqa: F401  (re-exported)


def lr_spread(lo: float, hi: float, n: int) -> list[float]:
    "`n` rates from `lo` (stem) to `hi` (head), geometric as fastai spreads `slice(lo, hi)`; one group: `hi`"
    lo, hi = check_lr(lo, 'lo'), check_lr(hi, 'hi')
    if n == 1: return [float(hi)]
    return [float(x) for x in np.geomspace(lo, hi, n)]


def n_groups_of(n_groups) -> int:
    "`n_groups` as a positive int: an int, or anything with an `n_groups` attribute (a fastai `Learner`)"
    try: return check_count(getattr(n_groups, 'n_groups', n_groups), 'n_groups')
    except ValueError:
        raise ValueError(f"n_groups must be a positive int or a Learner (layer_decay(lr, learn)); "
                         f"got {n_groups!r:.80}") from None


def layer_decay(lr_max: float, n_groups, decay: float = 0.75) -> np.ndarray:
    """Per-group learning rates: the head (last group) gets `lr_max`, each earlier group `decay` times the
    next; `n_groups` is a number or a `Learner` (its `n_groups`), so it works before the first fit"""
    lr_max, n, decay = check_lr(lr_max, 'lr_max'), n_groups_of(n_groups), check_decay(decay)
    return lr_max * decay ** np.arange(n - 1, -1, -1, dtype=float)
