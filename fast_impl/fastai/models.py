"Models for a Learner: an arch built with real weights and a new classifier; the statistics its weights want."
from __future__ import annotations

__all__ = ['classifier_name', 'set_classifier', 'load_body', 'output_shapes', 'fits', 'build_model',
           'arch_stats']

import os, re, warnings

from torch import nn
from fastai.vision.core import imagenet_stats

from ..archs import arch_name, check_pretrained, read_weights, resolve
from ..forward import ForwardError, run
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


def _head_prefix(model: nn.Module) -> str:
    "The classifier's dotted name and a dot, whose tensors need not fit; a name no tensor has without one"
    try: return classifier_name(model) + '.'
    except ValueError: return '\0'


_AUX = re.compile(r'^(aux1|aux2|AuxLogits)\.')


def load_body(model: nn.Module, path) -> nn.Module:
    """Load weights file `path` into `model`: every tensor but the classifier must fit (auxiliary heads are
    ignored)"""
    sd, own, head = read_weights(path), model.state_dict(), _head_prefix(model)
    fits = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in fits and not k.startswith(head) and not _AUX.match(k)]
    extra = [k for k in sd if k not in fits and not k.startswith(head) and not _AUX.match(k)]
    if missing or extra:
        raise ValueError(f"{str(path)!r} does not fit {type(model).__name__}: missing or misshapen "
                         f"{missing[:5]}, unexpected or misshapen {extra[:5]}")
    model.load_state_dict(fits, strict=False)
    return model


def output_shapes(model: nn.Module, input_data=None) -> list[list[int]] | None:
    """Shapes of the outputs of `model` on `input_data` (None: the input it is made for), from one pass of a
    meta copy (`forward.run`; no weights computed, `model` untouched); None when no pass runs"""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a model that needs real data runs on the CPU: no message for that
        try: rec = run(model, input_data=input_data)
        except (ForwardError, TypeError, ValueError, RuntimeError, NotImplementedError): return None
    return rec.outputs


def fits(shapes: list[list[int]] | None, n_out: int) -> bool:
    "True when `shapes` (`output_shapes`) are one `(batch, n_out)` tensor of scores: no new classifier needed"
    return shapes is not None and len(shapes) == 1 and len(shapes[0]) == 2 and shapes[0][1] == n_out


def _with_n_out(arch, n_out: int, pretrained, kwargs: dict) -> nn.Module | None:
    "`arch` rebuilt by its builder for `n_out` classes (`num_classes=` or `n_out=`); None if it takes neither"
    if isinstance(arch, nn.Module): return None
    for k in ('num_classes', 'n_out'):
        if k in kwargs: continue
        try: model = resolve(arch, device='cpu', pretrained=pretrained is True, **{k: n_out}, **kwargs)
        except TypeError as e:
            if f"'{k}'" in str(e): continue
            raise
        if pretrained not in (False, None, True): load_body(model, pretrained)
        return _drop_aux(model)
    return None


def _new_head(model: nn.Module, arch, n_out: int, pretrained, kwargs: dict, input_data) -> nn.Module:
    """`model` with a classifier for `n_out` classes (the body from a `pretrained` file): its own swapped,
    else `arch` built for `n_out` classes; else one `ValueError` saying what the model gives and what to do"""
    if callable(getattr(model, 'reset_classifier', None)) or _head_prefix(model) != '\0':
        if pretrained not in (False, None, True): load_body(model, pretrained)
        return set_classifier(model, n_out)
    rebuilt = _with_n_out(arch, n_out, pretrained, kwargs)
    if rebuilt is not None and fits(output_shapes(rebuilt, input_data), n_out): return rebuilt
    shapes = output_shapes(model, input_data)
    got = ('no output a pass could show' if shapes is None else
           f"an output of shape {shapes[0]}" if len(shapes) == 1 else f"outputs of shapes {shapes}")
    why = (f"fine-tuning pretrained weights gives it a new classifier for {n_out} classes"
           if fits(shapes, n_out) else f"it gives {got}, not scores for {n_out} classes")
    raise ValueError(f"{arch_name(arch)}: {why}, but it has no Linear classifier to replace nor a "
                     f"num_classes=/n_out= argument: give it a head that ends in {n_out} outputs (nn.Linear)")


def build_model(arch, n_out: int, pretrained: bool | str | os.PathLike = False, input_data=None,
                **kwargs) -> nn.Module:
    """`arch` on the CPU with real weights (the registry's if `pretrained` is True, a file's if a path), as it
    is when its output already fits `n_out` classes (a pass on meta with `input_data`, None: its own input
    size) and it is not fine-tuned from `pretrained` weights; else with a new `n_out`-class classifier
    (`set_classifier`, or its builder's `num_classes=`/`n_out=`), the weights file loaded into its body"""
    check_pretrained(pretrained)
    model = resolve(arch, device='cpu', pretrained=pretrained is True, **kwargs)
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(f"{type(model).__name__} is on the meta device; a Learner needs real weights "
                         "(pass a name or a builder instead)")
    model = _drop_aux(model)
    tuned = pretrained not in (False, None)  # fine-tuning: a new classifier for the new classes, always
    if not tuned and fits(output_shapes(model, input_data), n_out): return model
    return _new_head(model, arch, n_out, pretrained, kwargs, input_data)


def arch_stats(model: nn.Module) -> tuple[list, list]:
    "Mean and std the weights of `model` expect: timm's `pretrained_cfg`, else ImageNet's (torchvision)"
    cfg = getattr(unwrap(model), 'pretrained_cfg', None) or {}
    if cfg.get('mean') and cfg.get('std'): return list(cfg['mean']), list(cfg['std'])
    return list(imagenet_stats[0]), list(imagenet_stats[1])
