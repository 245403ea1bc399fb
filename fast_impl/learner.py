"fastai integration (the only module importing fastai): discriminative Learners, layer decay, no-decay policy, group reports."
from __future__ import annotations

__all__ = ['discriminative_learner', 'DiscriminativeLearner', 'build_model', 'classifier_name',
           'set_classifier', 'load_body', 'arch_stats', 'layer_decay', 'no_decay_params', 'is_norm', 'GroupsReport']

import difflib, functools, inspect, os, re, warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from fastcore.basics import patch
from fastcore.meta import delegates
from fastai.learner import Learner
import fastai.callback.schedule, fastai.callback.progress  # noqa: F401  (fit_one_cycle, fine_tune, progress bars)
from fastai.torch_core import norm_types
from fastai.vision.core import imagenet_stats

from .lr import check_lrs, layer_decay  # noqa: F401  (layer_decay: re-exported from the light `lr` module)
from .render import Report, fmt_int, html_table, pretty_table
from .resolve import arch_name, check_pretrained, read_weights, resolve
from .split import check_groups, splitter
from .split.rules import head_modules
from .tree import unwrap

# ---------------------------------------------------------------- norm and weight-decay policy

_NORMS = norm_types + (nn.GroupNorm, nn.LocalResponseNorm, getattr(nn, 'RMSNorm', nn.GroupNorm), nn.SyncBatchNorm)
_NO_WD_NAME = re.compile(r'(^|\.)((cls|class|dist|reg|register|mask)_?tokens?|pos_?embed\w*|pos_?embedding\w*|'
                         r'absolute_pos_embed|relative_position_bias_table|gamma(_\d)?|layer_?scale\w*)$')


def is_norm(m: nn.Module) -> bool:
    "True for a norm layer: fastai's list, GroupNorm, RMSNorm, any `*Norm*` class holding parameters (timm norm-act)"
    if isinstance(m, _NORMS): return True
    if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)): return False
    return 'Norm' in type(m).__name__ and next(m.parameters(recurse=False), None) is not None


def _is_scale(m: nn.Module) -> bool:
    "True for a layer-scale module (timm `LayerScale`, `LayerScale2d`, MetaFormer `Scale`)"
    return re.search(r'Scale(2d)?$', type(m).__name__) is not None


def _timm_no_wd(model: nn.Module) -> set[str]:
    "Full dotted names listed by every `no_weight_decay()` method in `model` (timm)"
    names = set()
    for prefix, m in model.named_modules():
        f = getattr(m, 'no_weight_decay', None)
        if not callable(f): continue
        try: listed = f()
        except Exception: continue
        names |= {f'{prefix}.{n}' if prefix else n for n in listed}
    return names


def no_decay_params(model: nn.Module, with_bias: bool = True) -> list[nn.Parameter]:
    "Parameters of `model` without weight decay, trained while frozen: norms, layer scales, tokens, timm's `no_weight_decay()`"
    # with_bias: also every bias (fastai's `norm_bias_params` contract: True for weight decay, False for train_bn)
    model = unwrap(model)
    listed = _timm_no_wd(model)
    special = {n for n, m in model.named_modules() if is_norm(m) or _is_scale(m)}
    res = []
    for name, p in model.named_parameters():
        owner, _, leaf = name.rpartition('.')
        if (owner in special or _NO_WD_NAME.search(name) or name in listed or any(name.startswith(n + '.') for n in listed)
                or (with_bias and (leaf == 'bias' or leaf.endswith('_bias')))): res.append(p)
    return res

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
            check_groups(unwrap(self.model), _as_groups(self.splitter(self.model)))
        super().create_opt()

    def freeze_to(self, n: int):
        if self.opt is None: self.create_opt()
        if len(self.opt.param_lists) == 1 and n != 0:
            warnings.warn("freeze_to/freeze on a Learner with a single parameter group freezes nothing; "
                          "split the model with groups='stages', an int, or cuts", stacklevel=2)
        super().freeze_to(n)

    def _check(self, name: str, lr):
        "Raise on a non-positive or non-finite rate; warn (once per fit) on per-group rates for frozen groups"
        check_lrs(lr, f'{name} learning rate')
        if not _per_group(lr): return
        if self.opt is None: self.create_opt()
        frozen, n = getattr(self.opt, 'frozen_idx', 0), self.n_groups
        if not frozen: return
        trains = 'only the head group trains' if n - frozen == 1 else f'only the last {n - frozen} train'
        warnings.warn(f"{name} got per-group learning rates but {frozen} of {n} groups are frozen, so "
                      f"{trains} and their rates are unused: call learn.unfreeze() first, or use "
                      f"learn.fine_tune(...)",
                      stacklevel=3)

    fit = _checked('fit', 'lr')
    fit_one_cycle = _checked('fit_one_cycle', 'lr_max')
    fit_flat_cos = _checked('fit_flat_cos', 'lr')
    fit_sgdr = _checked('fit_sgdr', 'lr_max')


@patch(as_prop=True)
def n_groups(self: Learner) -> int:
    "Number of layer groups: the optimizer's, or the splitter's before it exists (`layer_decay(lr, learn)`)"
    if self.opt is not None: return len(self.opt.param_lists)
    return len(_as_groups(self.splitter(self.model)))


_STRATEGIES = ('stages',)
_GROUPS_HELP = ("groups takes 'stages', a number of groups, cut paths such as ['layer2', 'layer4'], "
                "or a splitter function")


def _splitter(groups, model: nn.Module, head=None):
    "A splitter for `groups` ('stages', a number of groups, cut paths, or a function) and `head`, checked on `model` now"
    if callable(groups) and head is not None:
        raise ValueError("head= applies to groups='stages', a number or cut paths; a splitter function makes its own head")
    head_modules(unwrap(model), head)  # a bad head= is its own error, listing the valid children
    try:
        split = groups if callable(groups) else splitter(groups, head)
        check_groups(unwrap(model), _as_groups(split(model)))
    except (ValueError, KeyError, IndexError, TypeError) as e:
        close = difflib.get_close_matches(groups, _STRATEGIES, n=1) if isinstance(groups, str) else []
        close = [c for c in close if c != groups]
        why = f"did you mean {close[0]!r}?" if close else (str(e.args[0]) if e.args else type(e).__name__)
        err = type(e) if isinstance(e, (ValueError, TypeError, IndexError)) else ValueError  # KeyError quotes
        shown = (getattr(groups, '__name__', None) if callable(groups) else None) or repr(groups)
        name = type(unwrap(model)).__name__
        raise err(f"groups={shown} does not split {name}: {why} ({_GROUPS_HELP})") from e
    return split


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


@dataclass
class LearnerGroup:
    "One layer group as the optimizer sees it"
    group: int
    first: str
    last: str
    tensors: int
    params: int
    trainable: int
    lr: float
    wd: float
    no_wd: int
    frozen: bool


def _module_of(name: str) -> str:
    "The module holding parameter `name` (the parameter's own name when the root holds it)"
    return name.rpartition('.')[0] or name


def _group_rows(learn: Learner) -> list[LearnerGroup]:
    if learn.opt is None: learn.create_opt()
    opt, names = learn.opt, {id(p): n for n, p in unwrap(learn.model).named_parameters()}
    rows = []
    for i, (ps, h) in enumerate(zip(opt.param_lists, opt.hypers)):
        ns = [names.get(id(p), '?') for p in ps]
        rows.append(LearnerGroup(i, _module_of(ns[0]) if ns else '', _module_of(ns[-1]) if ns else '', len(ps),
                             sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad),
                             float(h.get('lr', float('nan'))), float(h.get('wd', 0.)),
                             sum(not opt.state[p].get('do_wd', True) for p in ps), i < getattr(opt, 'frozen_idx', 0)))
    return rows


class GroupsReport(Report):
    "A Learner's layer groups: module range, parameters, share, LR, frozen, weight decay"
    title = 'Layer groups'

    def __init__(self, rows: list[LearnerGroup]): self.rows = rows

    @property
    def total(self) -> int: return sum(r.params for r in self.rows)

    def to_df(self):
        import pandas as pd
        tot = self.total or 1
        return pd.DataFrame([dict(group=r.group, modules=f'{r.first} .. {r.last}' if r.first != r.last else r.first,
                                  tensors=r.tensors, params=r.params, pct=round(100 * r.params / tot, 1), lr=r.lr,
                                  frozen=r.frozen, trainable=r.trainable, wd=r.wd, no_wd_tensors=r.no_wd)
                             for r in self.rows])

    HEADS = ['Group', 'Modules', 'Tensors', 'Params', '% of total', 'LR', 'Frozen', 'Trainable', 'WD',
             'No-WD tensors']

    def _cells(self) -> list[list]:
        "The rows as the text and HTML tables show them (one set of headers and cells for both)"
        tot = self.total or 1
        span = lambda r: r.first if r.first == r.last else f'{r.first} .. {r.last}'
        return [[r.group, span(r), r.tensors, fmt_int(r.params), f'{100 * r.params / tot:.1f}%',
                 f'{r.lr:.3g}', 'yes' if r.frozen else 'no', fmt_int(r.trainable), f'{r.wd:g}',
                 f'{r.no_wd}/{r.tensors}']
                for r in self.rows]

    def _footer(self) -> str: return f'Total params: {fmt_int(self.total)} in {len(self.rows)} groups'

    def to_text(self) -> str: return f'{pretty_table(self.HEADS, self._cells())}\n{self._footer()}'

    def _repr_html_(self) -> str:
        return html_table(self.HEADS, self._cells(), self.title) + f'<p>{self._footer()}</p>'


@patch
def show_groups(self: Learner) -> GroupsReport:
    "A table of the optimizer's layer groups: module range, params, % of total, current LR, frozen, weight decay"
    return GroupsReport(_group_rows(self))


@patch
def plot_groups(self: Learner, figsize=(8, 3)):
    "A bar chart of parameters and learning rate per layer group; returns the matplotlib figure"
    import matplotlib.pyplot as plt
    rows = _group_rows(self)
    fig, (a, b) = plt.subplots(1, 2, figsize=figsize)
    x = [r.group for r in rows]
    a.bar(x, [r.params for r in rows], color=['tab:gray' if r.frozen else 'tab:blue' for r in rows])
    a.set(title='parameters (grey: frozen)', xlabel='group', yscale='log')
    b.bar(x, [r.lr for r in rows], color='tab:orange')
    b.set(title='learning rate', xlabel='group', yscale='log')
    fig.tight_layout()
    return fig
