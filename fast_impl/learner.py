"fastai integration (the only module importing fastai): discriminative Learners, layer decay, no-decay policy, group reports."
from __future__ import annotations

__all__ = ['discriminative_learner', 'DiscriminativeLearner', 'GroupStats', 'build_model', 'classifier_name',
           'set_classifier', 'load_body', 'arch_stats', 'layer_decay', 'no_decay_params', 'is_norm', 'group_labels']

import difflib, functools, inspect, os, re, warnings

import numpy as np
import torch
from torch import nn
from fastcore.basics import patch
from fastcore.meta import delegates
from fastai.callback.core import Callback
from fastai.learner import Learner
import fastai.callback.schedule, fastai.callback.progress  # noqa: F401  (fit_one_cycle, fine_tune, progress bars)
from fastai.vision.core import imagenet_stats

from .lr import check_lrs, layer_decay  # noqa: F401  (layer_decay: re-exported from the light `lr` module)
from .optim import GroupTracker, check_count, group_rates, is_norm, no_decay_params, plot_group_stats  # noqa: F401
from .archs import arch_name, check_pretrained, read_weights, resolve
from .split import Splitter, check_groups, group_table, named_groups, splitter
from .split.table import GroupTable
from .tree import unwrap

# ---------------------------------------------------------------- building the model


def classifier_name(model: nn.Module) -> str:
    "Dotted name of `model`'s classifier: timm's `get_classifier()`, else its last Linear (or SqueezeNet's final 1x1 conv)"
    get = getattr(model, 'get_classifier', None)
    if callable(get):
        head = get()
        for n, m in model.named_modules():
            if m is head and isinstance(m, (nn.Linear, nn.Conv2d)): return n
    cands = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    lin = [n for n, m in cands if isinstance(m, nn.Linear)]
    if cands and isinstance(cands[-1][1], nn.Conv2d) and cands[-1][1].kernel_size == (1, 1) and not lin: return cands[-1][0]
    if not lin: raise ValueError(f"{type(model).__name__} has no Linear classifier to replace; pass a model with one")
    return lin[-1]


def set_classifier(model: nn.Module, n_out: int) -> nn.Module:
    "Give `model` a new classifier for `n_out` classes (timm's `reset_classifier`, else its last Linear swapped)"
    if callable(getattr(model, 'reset_classifier', None)):
        model.reset_classifier(n_out)
        return model
    name = classifier_name(model)
    parent, _, leaf = name.rpartition('.')
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear): new = nn.Linear(old.in_features, n_out, bias=old.bias is not None)
    else: new = nn.Conv2d(old.in_channels, n_out, old.kernel_size, bias=old.bias is not None)
    setattr(model.get_submodule(parent), leaf, new.to(old.weight.device))
    return model


def _drop_aux(model: nn.Module) -> nn.Module:
    "Remove auxiliary classifiers (torchvision GoogLeNet `aux1/aux2`, Inception3 `AuxLogits`) so `forward` returns logits"
    if getattr(model, 'aux_logits', False):
        model.aux_logits = False
        for n in ('aux1', 'aux2', 'AuxLogits'):
            if hasattr(model, n): setattr(model, n, None)
    return model


_AUX = re.compile(r'^(aux1|aux2|AuxLogits)\.')


def load_body(model: nn.Module, path) -> nn.Module:
    "Load weights file `path` into `model`: every tensor but the classifier must fit (auxiliary heads are ignored)"
    sd, own, head = read_weights(path), model.state_dict(), classifier_name(model) + '.'
    fits = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in fits and not k.startswith(head) and not _AUX.match(k)]
    extra = [k for k in sd if k not in fits and not k.startswith(head) and not _AUX.match(k)]
    if missing or extra:
        raise ValueError(f"{str(path)!r} does not fit {type(model).__name__}: missing or misshapen {missing[:5]}, "
                         f"unexpected or misshapen {extra[:5]}")
    model.load_state_dict(fits, strict=False)
    return model


def build_model(arch, n_out: int, pretrained: bool | str | os.PathLike = False, **kwargs) -> nn.Module:
    "`arch` on the CPU with real weights (the registry's if `pretrained` is True, a file's if a path) and a new `n_out`-class head"
    check_pretrained(pretrained)
    model = resolve(arch, device='cpu', pretrained=pretrained is True, **kwargs)
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(f"{type(model).__name__} is on the meta device; a Learner needs real weights "
                         "(pass a name or a builder instead)")
    if pretrained not in (False, None, True): load_body(model, pretrained)
    return set_classifier(_drop_aux(model), n_out)


def arch_stats(model: nn.Module) -> tuple[list, list]:
    "Mean and std the weights of `model` expect: timm's `pretrained_cfg`, else ImageNet's (torchvision, fastai)"
    cfg = getattr(unwrap(model), 'pretrained_cfg', None) or {}
    if cfg.get('mean') and cfg.get('std'): return list(cfg['mean']), list(cfg['std'])
    return list(imagenet_stats[0]), list(imagenet_stats[1])


def _add_norm(dls, stats):
    "Add `Normalize` with `stats` to `dls` after each batch, unless it has one already (as fastai's `vision_learner`)"
    from fastai.data.transforms import Normalize
    if any(isinstance(t, Normalize) for t in dls.after_batch.fs): return
    dls.add_tfms([Normalize.from_stats(*stats)], 'after_batch')
    # from_stats puts the stats on the default device (a GPU where there is one): they go where the batches go
    if dls.train.device is not None: dls.to(dls.train.device)

# ---------------------------------------------------------------- the Learner


def _as_groups(groups) -> list[list]:
    "A splitter's result as a list of parameter lists (fastai also allows one flat list, or dicts with 'params')"
    groups = list(groups)
    if groups and isinstance(groups[0], torch.Tensor): return [groups]
    return [list(g['params']) if isinstance(g, dict) else list(g) for g in groups]


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


class DiscriminativeLearner(Learner):
    """A fastai `Learner` that checks its groups partition the model, applies `no_decay_params`, checks the
    learning rates of every fit, and warns on a futile `freeze` or on per-group rates for frozen groups"""
    def _bn_bias_state(self, with_bias): return [self.opt.state[p] for p in no_decay_params(self.model, with_bias)]

    def create_opt(self):
        from fastai.optimizer import OptimWrapper
        if not isinstance(self.opt_func, OptimWrapper):
            if isinstance(self.splitter, Splitter): named = self.splitter.named(self.model)
            else: named = [(f'group {i + 1}', g) for i, g in enumerate(_as_groups(self.splitter(self.model)))]
            check_groups(unwrap(self.model), [g for _, g in named])
            self._group_names = [x for x, _ in named]  # the optimizer's groups, as group_labels shows them
        super().create_opt()

    def freeze_to(self, n: int):
        if self.opt is None: self.create_opt()
        if len(self.opt.param_lists) == 1 and n != 0:
            warnings.warn("freeze_to/freeze on a Learner with a single parameter group freezes nothing; "
                          "split the model with groups='stages', an int, or cuts", stacklevel=2)
        super().freeze_to(n)

    _phased = False  # in gradual_unfreeze: frozen groups are meant

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
                      f"learn.fine_tune(...)",
                      stacklevel=3)

    def gradual_unfreeze(self, epochs: int | list[int] = 1, lr_max: float = 1e-3, decay: float | None = None,
                         step: int = 1, **kwargs):
        """ULMFiT's gradual unfreezing: train the head group, then unfreeze `step` more groups at a time from the
        top, one `fit_one_cycle` per phase, ending with every group trained. `epochs`: per phase, or a list with
        one number per phase. Each group's rate: `lr_max` at the head, `decay` times the next group's (None:
        geometric from `lr_max/10`, as `slice(lr_max/10, lr_max)`). `kwargs` go to `fit_one_cycle`. The logger
        shows each phase."""
        n = self.n_groups
        if n < 2:
            raise ValueError(f"gradual_unfreeze needs 2 or more layer groups to unfreeze one by one; this Learner "
                             f"has {n}: build it with groups='stages', 'blocks' or a number")
        starts = list(range(n - 1, 0, -check_count(step, 'step'))) + [0]
        per = list(epochs) if isinstance(epochs, (list, tuple)) else [epochs] * len(starts)
        if len(per) != len(starts):
            raise ValueError(f"epochs must be a whole number >= 1, or a list of {len(starts)} of them (one per phase: "
                             f"{n} groups, step {step}); got {epochs!r}")
        per = [check_count(e, 'epochs') for e in per]
        lrs = np.array(group_rates(lr_max, n, decay))
        names = group_labels(self)
        for k, (at, e) in enumerate(zip(starts, per)):
            self.freeze_to(at)
            trained = names[at] if at == n - 1 else f'{names[at]} .. {names[-1]}'
            self.logger(f'gradual unfreezing, phase {k + 1}/{len(starts)}: training {n - at} of {n} groups '
                        f'({trained})')
            self._phased = True
            try: self.fit_one_cycle(e, lr_max=lrs, **kwargs)
            finally: self._phased = False

    fit = _checked('fit', 'lr')
    fit_one_cycle = _checked('fit_one_cycle', 'lr_max')
    fit_flat_cos = _checked('fit_flat_cos', 'lr')
    fit_sgdr = _checked('fit_sgdr', 'lr_max')


@patch(as_prop=True)
def n_groups(self: Learner) -> int:
    "Number of layer groups: the optimizer's, or the splitter's before it exists (`layer_decay(lr, learn)`)"
    if self.opt is not None: return len(self.opt.param_lists)
    return len(_as_groups(self.splitter(self.model)))


def _splitter(groups, model: nn.Module, head=None):
    "A splitter for `groups` ('stages', 'blocks', a number of groups, cut paths, or a function) and `head`, checked now"
    split = groups if callable(groups) else None
    named_groups(model, groups, head)  # one clear error for a bad groups= or head=
    return split or splitter(groups, head)


_OURS = {'self', 'dls', 'model', 'splitter'}  # Learner arguments that discriminative_learner sets itself


def _split_kwargs(kwargs: dict) -> tuple[dict, dict]:
    "`kwargs` split into those for `Learner` and those for the arch builder"
    names = set(inspect.signature(Learner.__init__).parameters) - _OURS
    return {k: v for k, v in kwargs.items() if k in names}, {k: v for k, v in kwargs.items() if k not in names}


def _build(arch, n_out: int, pretrained, mkw: dict) -> nn.Module:
    "`build_model`, an unexpected keyword reported as neither a Learner nor a builder argument"
    try: return build_model(arch, n_out, pretrained, **mkw)
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
    from fastai.data.transforms import get_c
    if n_out is not None and (isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1):
        raise ValueError(f"n_out must be a number of classes >= 1, or None for the number in dls; "
                         f"got {n_out!r}")
    n_out = n_out or get_c(dls)
    if not n_out: raise ValueError("n_out is not given and dls has no `c` or vocab to infer it from; pass n_out=")
    return n_out


@delegates(Learner.__init__, keep=True, but=['dls', 'model', 'splitter'])
def discriminative_learner(dls, arch, groups='stages', pretrained: bool | str | os.PathLike = False,
                           n_out: int | None = None, normalize: bool = True, head=None,
                           **kwargs) -> DiscriminativeLearner:
    """A fastai `Learner` for any timm, torchvision, fastai or fast_impl classifier, split into layer groups.

    Args:
        dls: the fastai `DataLoaders`; `n_out` defaults to its number of classes.
        arch: a name (`'convnext_nano'`, `'torchvision:vit_b_16'`, `'fastai:xresnet18'`), builder or module.
            It keeps its own architecture; only its classifier is replaced for `n_out` classes.
        groups: `'stages'`, a number of groups, cut paths (`['layer2', 'fc']`), or a splitter function;
            checked here, on the model, so a bad value fails now rather than at the first fit.
        head: module names or index paths that belong to the head group (trained while frozen), beside the
            layers the splitting rules find there (everything after the backbone).
        pretrained: `True` for the registry's weights, or a local weights file; then the model is frozen
            (all but the head group) and, with `normalize`, the arch's mean/std are added to `dls`.
        kwargs: `Learner` arguments (`metrics`, `opt_func`, `wd`, `cbs`, ...); the rest go to the arch builder
            (`img_size`, `image_size`, `drop_path_rate`, ...).
    """
    check_pretrained(pretrained)
    lkw, mkw = _split_kwargs(kwargs)
    model = _build(arch, _n_out(n_out, dls), pretrained, mkw)
    split = _splitter(groups, model, head)
    if pretrained and normalize: _add_norm(dls, arch_stats(model))
    learn = DiscriminativeLearner(dls, model, splitter=split, **lkw)
    if pretrained: learn.freeze()
    return learn


# ---------------------------------------------------------------- show_groups / plot_groups


def group_labels(learn: Learner) -> list[str]:
    "The name of each layer group of `learn` ('stem', 'stage 2', 'block 7', 'head'; 'group i' for other splitters)"
    n = learn.n_groups
    names = getattr(learn, '_group_names', None)  # the optimizer's groups, named when it was made
    if names is None and callable(getattr(learn.splitter, 'named', None)):
        names = [x for x, _ in learn.splitter.named(learn.model)]
    return names if names is not None and len(names) == n else [f'group {i + 1}' for i in range(n)]


@patch
def show_groups(self: Learner) -> GroupTable:
    "The layer groups as the optimizer sees them: names, module range, params, share, LR, frozen, weight decay"
    if self.opt is None: self.create_opt()
    opt = self.opt
    groups = [list(ps) for ps in opt.param_lists]
    t = group_table(unwrap(self.model), groups, lrs=[float(h.get('lr', float('nan'))) for h in opt.hypers],
                    names=group_labels(self))
    frozen = getattr(opt, 'frozen_idx', 0)
    for r, ps, h in zip(t.rows, groups, opt.hypers):
        r.frozen, r.wd = r.group < frozen, float(h.get('wd', 0.))
        r.no_wd = sum(not opt.state[p].get('do_wd', True) for p in ps)
    t.title = 'Layer groups'
    return t


@patch
def plot_groups(self: Learner, figsize=(8, 3)):
    "A bar chart of parameters and learning rate per layer group; returns the matplotlib figure"
    import matplotlib.pyplot as plt
    rows = self.show_groups().rows
    fig, (a, b) = plt.subplots(1, 2, figsize=figsize)
    x = [r.group for r in rows]
    a.bar(x, [r.params for r in rows], color=['tab:gray' if r.frozen else 'tab:blue' for r in rows])
    a.set(title='parameters (grey: frozen)', xlabel='group', yscale='log')
    b.bar(x, [r.lr for r in rows], color='tab:orange')
    b.set(title='learning rate', xlabel='group', yscale='log')
    fig.tight_layout()
    return fig

# ---------------------------------------------------------------- group statistics and gradual unfreezing


class GroupStats(Callback):
    """Records, every training step (or one in `every`) and layer group: the learning rate, the gradient norm and
    the update-to-weight ratio ||delta w|| / ||w||. `learn.group_stats.df` is the table (it runs on across
    fits, `reset()` clears it), `learn.plot_group_stats()` the figure. Frozen groups show NaN."""
    order = 60  # after the schedulers (the rates of this step)

    def __init__(self, every: int = 1):
        self.tracker = GroupTracker(None, every)

    def reset(self): self.tracker.rows, self.tracker.n = [], 0

    def before_fit(self): self._names = group_labels(self.learn)

    def before_step(self):
        if not self.training: return
        opt = self.learn.opt
        named = zip(self._names, opt.param_lists, opt.hypers)
        self.tracker.before([(name, ps, h.get('lr', float('nan'))) for name, ps, h in named], hypers=opt.hypers)

    def after_step(self):
        if self.training: self.tracker.after()

    @property
    def df(self):
        "`step, group, name, lr, grad_norm, update_ratio`: one row per recorded step and layer group"
        return self.tracker.df


@patch
def plot_group_stats(self: Learner, figsize=(11, 3)):
    "Learning rate, gradient norm and update ratio per layer group against the step (log scale); the Figure"
    cb = getattr(self, 'group_stats', None)
    if not isinstance(cb, GroupStats):
        raise ValueError("this Learner records no group statistics: pass cbs=GroupStats() to the Learner "
                         "(or learn.add_cb(GroupStats())) and fit")
    if not cb.tracker.rows: raise ValueError("no group statistics yet: fit first")
    return plot_group_stats(cb.df, figsize)
