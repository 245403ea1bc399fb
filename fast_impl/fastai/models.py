"Models for a Learner: an arch built with real weights and a new classifier; the statistics its weights want."
from __future__ import annotations

__all__ = ['classifier_name', 'set_classifier', 'load_body', 'build_model', 'arch_stats']

import os, re

from torch import nn
from fastai.vision.core import imagenet_stats

from ..archs import check_pretrained, read_weights, resolve
from ..layers import classifiers
from ..tree import unwrap


def _layer(m: nn.Module) -> bool: return isinstance(m, (nn.Linear, nn.Conv2d))


def classifier_name(model: nn.Module) -> str:
    """Dotted name of `model`'s classifier, the last of `layers.classifiers` (timm's `get_classifier()`, else
    the last Linear, else a `classifier`/`fc`/`head` child): that layer, or the last Linear or conv in it
    (SqueezeNet's final 1x1 conv)"""
    found = classifiers(model)
    inner = [m for m in found[-1].modules() if _layer(m)] if found else []
    if not inner:
        raise ValueError(f"{type(model).__name__} has no Linear classifier to replace; pass a model with one")
    names = {id(m): n for n, m in model.named_modules()}
    return names[id(inner[-1])]


def set_classifier(model: nn.Module, n_out: int) -> nn.Module:
    "Give `model` a new classifier for `n_out` classes (timm's `reset_classifier`, else the layer swapped)"
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
    """Remove auxiliary classifiers (torchvision GoogLeNet `aux1/aux2`, Inception3 `AuxLogits`) so `forward`
    returns logits"""
    if getattr(model, 'aux_logits', False):
        model.aux_logits = False
        for n in ('aux1', 'aux2', 'AuxLogits'):
            if hasattr(model, n): setattr(model, n, None)
    return model


_AUX = re.compile(r'^(aux1|aux2|AuxLogits)\.')


def load_body(model: nn.Module, path) -> nn.Module:
    """Load weights file `path` into `model`: every tensor but the classifier must fit (auxiliary heads are
    ignored)"""
    sd, own, head = read_weights(path), model.state_dict(), classifier_name(model) + '.'
    fits = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in fits and not k.startswith(head) and not _AUX.match(k)]
    extra = [k for k in sd if k not in fits and not k.startswith(head) and not _AUX.match(k)]
    if missing or extra:
        raise ValueError(f"{str(path)!r} does not fit {type(model).__name__}: missing or misshapen "
                         f"{missing[:5]}, unexpected or misshapen {extra[:5]}")
    model.load_state_dict(fits, strict=False)
    return model


def build_model(arch, n_out: int, pretrained: bool | str | os.PathLike = False, **kwargs) -> nn.Module:
    """`arch` on the CPU with real weights (the registry's if `pretrained` is True, a file's if a path) and a
    new `n_out`-class head"""
    check_pretrained(pretrained)
    model = resolve(arch, device='cpu', pretrained=pretrained is True, **kwargs)
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(f"{type(model).__name__} is on the meta device; a Learner needs real weights "
                         "(pass a name or a builder instead)")
    if pretrained not in (False, None, True): load_body(model, pretrained)
    return set_classifier(_drop_aux(model), n_out)


def arch_stats(model: nn.Module) -> tuple[list, list]:
    "Mean and std the weights of `model` expect: timm's `pretrained_cfg`, else ImageNet's (torchvision)"
    cfg = getattr(unwrap(model), 'pretrained_cfg', None) or {}
    if cfg.get('mean') and cfg.get('std'): return list(cfg['mean']), list(cfg['std'])
    return list(imagenet_stats[0]), list(imagenet_stats[1])
