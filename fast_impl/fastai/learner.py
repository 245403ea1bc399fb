"""The discriminative Learner: a fastai `Learner` for any arch, split into layer groups computed and checked
once, with checked learning rates, the no-decay policy and ULMFiT's gradual unfreezing."""
from __future__ import annotations

__all__ = ['discriminative_learner', 'DiscriminativeLearner', 'group_labels', 'EpochLines']

import difflib, functools, inspect, os, re, warnings

import numpy as np
from torch import nn
from fastcore.basics import patch
from fastcore.meta import delegates
from fastai.data.transforms import get_c
from fastai.callback.progress import ProgressCallback
from fastai.learner import Learner
from fastai.optimizer import OptimWrapper
import fastai.callback.schedule  # noqa: F401  (fit_one_cycle, fine_tune)

from ..archs import arch_name, check_pretrained
from ..checks import check_count, check_indices, check_lrs
from ..optim import group_rates, no_decay_params
from ..split.splitters import as_groups, named_groups, splitter
from .data import add_norm
from .models import arch_stats, build_model


def _per_group(lr) -> bool:
    "True when `lr` gives the groups different rates: `slice(lo, hi)` or a sequence of several rates"
    if isinstance(lr, slice): return lr.start is not None
    return isinstance(lr, (list, tuple, np.ndarray)) and np.size(lr) > 1


def _checked(name: str, lr_arg: str):
    "fastai's fit method `name`, first checking the learning rates passed as `lr_arg` (`_check`)"
    base = getattr(Learner, name)
    sig = inspect.signature(base)

    @functools.wraps(base)
    def fit(self, *args, **kwargs):
        self._check(name, sig.bind(self, *args, **kwargs).arguments.get(lr_arg))
        return base(self, *args, **kwargs)
    return fit


def _param_ids(model: nn.Module) -> frozenset[int]: return frozenset(map(id, model.parameters()))


class DiscriminativeLearner(Learner):
    """A fastai `Learner` whose layer groups are split and checked to partition the model once (again only
    when the model, its parameters or the splitter change); it applies `no_decay_params`, checks the learning
    rates of every fit, and warns on a futile `freeze` or on per-group rates for frozen groups"""
    _groups = None  # ((model, splitter, parameter ids), [(name, params), ...]): the groups, computed once
    _input_data = None  # example inputs of the pass that orders the groups (one batch of the DataLoaders)
    _phased = False  # in gradual_unfreeze: frozen groups are meant

    def layer_groups(self) -> list[tuple[str, list]]:
        "(name, parameters) of each layer group of the model, as the splitter makes them; checked"
        ids, cached = _param_ids(self.model), self._groups
        if cached is not None:
            (model, split, was), named = cached
            if model is self.model and split is self.splitter and was == ids: return named
        named = named_groups(self.model, self.splitter, input_data=self._input_data)
        self._groups = ((self.model, self.splitter, ids), named)
        return self._groups[1]

    @property
    def n_groups(self) -> int:
        "Number of layer groups: the optimizer's, or the splitter's before it exists"
        return len(self.opt.param_lists) if self.opt is not None else len(self.layer_groups())

    def _bn_bias_state(self, with_bias):
        return [self.opt.state[p] for p in no_decay_params(self.model, with_bias)]

    def create_opt(self):
        if isinstance(self.opt_func, OptimWrapper): return super().create_opt()
        named = self.layer_groups()
        self._group_names = [x for x, _ in named]  # the optimizer's groups, as group_labels shows them
        split, self.splitter = self.splitter, lambda m: [g for _, g in named]  # fastai's create_opt splits
        try: super().create_opt()
        finally: self.splitter = split

    def freeze_to(self, n: int):
        if self.opt is None: self.create_opt()
        self.trained_groups = None
        if len(self.opt.param_lists) == 1 and n != 0:
            warnings.warn("freeze_to/freeze on a Learner with a single parameter group freezes nothing; "
                          "split the model with groups='stages', an int, or cuts", stacklevel=2)
        super().freeze_to(n)

    trained_groups = None  # the groups `train_only` keeps training (the rest frozen), or None

    def train_only(self, groups: int | list[int]):
        """Surgical fine-tuning (Lee et al., ICLR 2023): train only the layer groups `groups` (indices, -1 the
        head), every other group frozen with its norm layers, so its parameters stay bit-for-bit unchanged
        (its BatchNorm running statistics still follow the data in training mode, as under `freeze`).
        `freeze`/`unfreeze` (and `fine_tune`, which calls them) end it."""
        if self.opt is None: self.create_opt()
        keep = check_indices(groups, self.n_groups, 'train_groups')
        self.opt.freeze_to(0)
        for i, ps in enumerate(self.opt.param_lists):
            for p in ps: p.requires_grad_(i in keep)
        self.opt.clear_state()
        self.trained_groups = keep

    def _check(self, name: str, lr):
        "Raise on a non-positive or non-finite rate; warn (once per fit) on per-group rates for frozen groups"
        check_lrs(lr, f'{name} learning rate')
        if not _per_group(lr) or self._phased: return
        if self.opt is None: self.create_opt()
        frozen, n = getattr(self.opt, 'frozen_idx', 0), self.n_groups
        if not frozen: return
        trains = 'only the head group trains' if n - frozen == 1 else f'only the last {n - frozen} train'
        warnings.warn(f"{name} got per-group learning rates but {frozen} of {n} groups are frozen, so "
                      f"{trains} and their rates are unused: call learn.unfreeze() first, or use "
                      f"learn.fine_tune(...)", stacklevel=3)

    def gradual_unfreeze(self, epochs: int | list[int] = 1, lr_max: float = 1e-3, decay: float | None = None,
                         step: int = 1, **kwargs):
        """ULMFiT's gradual unfreezing: train the head group, then unfreeze `step` more groups at a time from
        the top, one `fit_one_cycle` per phase, ending with every group trained. `epochs`: per phase, or a
        list with one number per phase. Each group's rate: `lr_max` at the head, `decay` times the next
        group's (None: geometric from `lr_max/10`, as `slice(lr_max/10, lr_max)`). `kwargs` go to
        `fit_one_cycle`. The logger shows each phase; without a progress bar (`learn.no_bar()`), a table of
        its epochs under the recorder's metric names."""
        n = self.n_groups
        if n < 2:
            raise ValueError(f"gradual_unfreeze needs 2 or more layer groups to unfreeze one by one; this "
                             f"Learner has {n}: build it with groups='stages', 'blocks' or a number")
        starts = list(range(n - 1, 0, -check_count(step, 'step'))) + [0]
        per = _phase_epochs(epochs, len(starts), n, step)
        lrs = np.array(group_rates(lr_max, n, decay))
        names = group_labels(self)
        for k, (at, e) in enumerate(zip(starts, per)):
            self.freeze_to(at)
            trained = names[at] if at == n - 1 else f'{names[at]} .. {names[-1]}'
            self.logger(f'gradual unfreezing, phase {k + 1}/{len(starts)}: training {n - at} of {n} groups '
                        f'({trained})')
            self._phased, logger = True, self.logger
            if logger is print and not any(isinstance(cb, ProgressCallback) for cb in self.cbs):
                self.logger = EpochLines(self)  # no bar (`no_bar()`): a table, not fastai's bare lists
            try: self.fit_one_cycle(e, lr_max=lrs, **kwargs)
            finally: self._phased, self.logger = False, logger

    fit = _checked('fit', 'lr')
    fit_one_cycle = _checked('fit_one_cycle', 'lr_max')
    fit_flat_cos = _checked('fit_flat_cos', 'lr')
    fit_sgdr = _checked('fit_sgdr', 'lr_max')


class EpochLines:
    """A fastai logger writing the per-epoch table as plain lines, the recorder's metric names first: for
    logs, pipes and runs without a progress bar, where fastai prints bare lists; a text (a phase's title) is
    printed as it is, and the names again after it"""
    def __init__(self, learn: Learner): self.learn, self.widths = learn, None

    def __call__(self, log):
        if isinstance(log, str):
            self.widths = None
            return print(log, flush=True)
        if self.widths is None:
            names = list(self.learn.recorder.metric_names)
            self.widths = [max(len(n), 9) for n in names]
            print(self._line(names))
        print(self._line([f'{v:.6f}' if isinstance(v, float) else str(v) for v in log]), flush=True)

    def _line(self, cells) -> str: return '  '.join(f'{c:<{w}}' for c, w in zip(cells, self.widths)).rstrip()


def _phase_epochs(epochs, phases: int, n: int, step) -> list[int]:
    "`epochs` of gradual unfreezing as one whole number per phase, checked"
    per = list(epochs) if isinstance(epochs, (list, tuple)) else [epochs] * phases
    if len(per) != phases:
        raise ValueError(f"epochs must be a whole number >= 1, or a list of {phases} of them (one per phase: "
                         f"{n} groups, step {step}); got {epochs!r}")
    return [check_count(e, 'epochs') for e in per]


@patch(as_prop=True)
def n_groups(self: Learner) -> int:
    "Number of layer groups: the optimizer's, or the splitter's before it exists (`layer_decay(lr, learn)`)"
    if self.opt is not None: return len(self.opt.param_lists)
    return len(as_groups(self.splitter(self.model)))


def group_labels(learn: Learner) -> list[str]:
    "The name of each layer group of `learn` ('stem', 'stage 2', 'block 7', 'head'; 'group i' for others)"
    n = learn.n_groups
    names = getattr(learn, '_group_names', None)  # the optimizer's groups, named when it was made
    if names is None and callable(getattr(learn, 'layer_groups', None)):
        names = [x for x, _ in learn.layer_groups()]
    elif names is None and callable(getattr(learn.splitter, 'named', None)):
        names = [x for x, _ in learn.splitter.named(learn.model)]
    return names if names is not None and len(names) == n else [f'group {i + 1}' for i in range(n)]

# ---------------------------------------------------------------- discriminative_learner


_OURS = {'self', 'dls', 'model', 'splitter'}  # Learner arguments that discriminative_learner sets itself


def _split_kwargs(kwargs: dict) -> tuple[dict, dict]:
    "`kwargs` split into those for `Learner` and those for the arch builder"
    names = set(inspect.signature(Learner.__init__).parameters) - _OURS
    ours = {k: v for k, v in kwargs.items() if k in names}
    return ours, {k: v for k, v in kwargs.items() if k not in names}


def _build(arch, n_out: int, pretrained, mkw: dict, data=None) -> nn.Module:
    """`build_model` (its output checked on the inputs `data`), an unexpected keyword reported as neither a
    Learner nor a builder argument"""
    try: return build_model(arch, n_out, pretrained, input_data=data, **mkw)
    except TypeError as e:
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if not bad or bad.group(1) not in mkw: raise
        k = bad.group(1)
        learner_args = sorted(set(inspect.signature(Learner.__init__).parameters) - _OURS)
        close = difflib.get_close_matches(k, learner_args + ['groups', 'pretrained', 'n_out', 'normalize'])
        hint = f"did you mean {close[0]!r}? " if close else ''
        raise TypeError(f"{k!r} is not a Learner or builder argument of {arch_name(arch)}: {hint}Learner "
                        f"arguments: {', '.join(learner_args)}; anything else goes to the builder") from e


def _n_out(n_out, dls) -> int:
    "`n_out` checked, or the number of classes of `dls` when it is None"
    if n_out is not None and (isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1):
        raise ValueError(f"n_out must be a number of classes >= 1, or None for the number in dls; "
                         f"got {n_out!r}")
    n_out = n_out or get_c(dls)
    if not n_out:
        raise ValueError("n_out is not given and dls has no `c` or vocab to infer it from; pass n_out=")
    return n_out


def _one_batch(dls):
    "The model inputs of one batch of `dls` (one tensor, or a tuple for several inputs); None if none comes"
    try: b = dls.one_batch()
    except Exception: return None
    xs = tuple(b[:getattr(dls, 'n_inp', 1)]) if isinstance(b, (tuple, list)) else (b,)
    return xs[0] if len(xs) == 1 else xs


@delegates(Learner.__init__, keep=True, but=['dls', 'model', 'splitter'])
def discriminative_learner(dls, arch, groups='stages', pretrained: bool | str | os.PathLike = False,
                           n_out: int | None = None, normalize: bool = True, head=None, input_data=None,
                           train_groups: int | list[int] | None = None, **kwargs) -> DiscriminativeLearner:
    """A fastai `Learner` for any timm, torchvision, fastai or fast_impl classifier, split into layer groups.

    Args:
        dls: the fastai `DataLoaders`; `n_out` defaults to its number of classes.
        arch: a name (`'convnext_nano'`, `'torchvision:vit_b_16'`, `'fastai:xresnet18'`), builder or module.
            It keeps its own architecture, and its classifier when its output fits `n_out` classes; else the
            classifier is replaced (or the builder given `num_classes=`/`n_out=`).
        groups: `'stages'`, a number of groups, cut paths (`['layer2', 'fc']`), or a splitter function;
            checked here, on the model, so a bad value fails now rather than at the first fit.
        head: module names or index paths that belong to the head group (trained while frozen), beside the
            layers the splitting rules find there (everything after the backbone).
        input_data: example inputs of the forward pass that orders the groups (a tensor, a tuple of positional
            inputs, a dict of keyword inputs); by default the inputs of one batch of `dls`.
        pretrained: `True` for the registry's weights, or a local weights file; then the model is frozen
            (all but the head group) and, with `normalize`, the arch's mean/std are added to `dls`.
        train_groups: surgical fine-tuning: train only these layer groups (`[0]` the stem, `-1` the head),
            the others frozen bit-for-bit (`learn.train_only`).
        kwargs: `Learner` arguments (`metrics`, `opt_func`, `wd`, `cbs`, ...); the rest go to the arch builder
            (`img_size`, `image_size`, `drop_path_rate`, ...).
    """
    check_pretrained(pretrained)
    lkw, mkw = _split_kwargs(kwargs)
    data = _one_batch(dls) if input_data is None else input_data
    model = _build(arch, _n_out(n_out, dls), pretrained, mkw, data)
    named = named_groups(model, groups, head, data)  # one clear error for a bad groups= or head=, now
    split = groups if callable(groups) else splitter(groups, head)
    if pretrained and normalize: add_norm(dls, arch_stats(model))
    learn = DiscriminativeLearner(dls, model, splitter=split, **lkw)
    learn._groups, learn._input_data = ((model, split, _param_ids(model)), named), data  # the optimizer's
    if pretrained: learn.freeze()
    if train_groups is not None: learn.train_only(train_groups)
    return learn
