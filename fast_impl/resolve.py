"Turn an arch (module, builder, or registry name) into an `nn.Module`, on the meta device unless told otherwise."
from __future__ import annotations

__all__ = ['resolve', 'arch_name', 'UnknownArchError', 'register_source', 'SOURCES', 'known_names', 'on_meta',
           'load_weights', 'read_weights']

import difflib, inspect, os, warnings
from typing import Callable

import torch
from torch import nn

from .registry import Registry

SOURCES = Registry('arch source')  # prefix -> function(name) returning a builder or None


class UnknownArchError(ValueError):
    "An arch name that no registry (timm, torchvision, fastai, fast_impl) knows"


def register_source(prefix: str):
    "Decorator: register `f(name) -> builder | None` as the lookup for names written `prefix:name` (a taken prefix is an error)"
    return SOURCES.register(prefix)


def _timm():
    import timm
    return timm


@register_source('fast_impl')
def _fast_impl_builder(name: str):
    from . import models
    obj = getattr(models, name, None) if name in models.__all__ else None
    return obj if isinstance(obj, type) and issubclass(obj, nn.Module) else None


@register_source('timm')
def _timm_builder(name: str):
    timm = _timm()
    if not timm.is_model(name.split('.')[0]): return None
    def build(pretrained=False, **kw): return timm.create_model(name, pretrained=pretrained, **kw)
    build.__name__ = name
    return build


@register_source('torchvision')
def _torchvision_builder(name: str):
    import torchvision
    if name.lower() not in torchvision.models.list_models(): return None
    def build(pretrained=False, **kw):
        return torchvision.models.get_model(name.lower(), weights='DEFAULT' if pretrained else None, **kw)
    build.__name__ = name
    return build


def _xresnet_names() -> list[str]:
    "fastai's xresnet family, read from the source's `__all__`: importing fastai takes seconds"
    import ast, importlib.util
    spec = importlib.util.find_spec('fastai')
    if spec is None or not spec.submodule_search_locations: return []
    path = os.path.join(list(spec.submodule_search_locations)[0], 'vision', 'models', 'xresnet.py')
    try: tree = ast.parse(open(path).read())
    except (OSError, SyntaxError): return []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', '') == '__all__' for t in node.targets):
            return [n for n in ast.literal_eval(node.value) if n.startswith('x')]
    return []


@register_source('fastai')
def _fastai_builder(name: str):
    if name not in _xresnet_names(): return None
    from fastai.vision.models import xresnet
    return getattr(xresnet, name)


def known_names(prefix: str | None = None) -> list[str]:
    "Every arch name the registries know (for `prefix` only, when given), as `prefix:name`"
    lists = {'fast_impl': lambda: [n for n in __import__('fast_impl.models', fromlist=['x']).__all__ if _fast_impl_builder(n)],
             'timm': lambda: _timm().list_models(),
             'torchvision': lambda: __import__('torchvision').models.list_models(),
             'fastai': _xresnet_names}
    return [f'{p}:{n}' for p, f in lists.items() if prefix in (None, p) for n in f()]


def _lookup(name: str) -> Callable:
    "The builder for a registry `name`, written `prefix:name` or bare (fast_impl, timm, torchvision, fastai, in turn)"
    prefix, _, bare = name.rpartition(':')
    if prefix and prefix not in SOURCES:
        raise UnknownArchError(f"unknown arch source {prefix!r} in {name!r}; valid prefixes: {', '.join(SOURCES)}")
    for p in ([prefix] if prefix else list(SOURCES)):
        builder = SOURCES[p](bare)
        if builder is not None: return builder
    names = {}
    for full in known_names(prefix or None): names.setdefault(full.split(':', 1)[1], []).append(full.split(':')[0])
    close = [f"{n} ({', '.join(names[n])})" for n in difflib.get_close_matches(bare, list(names), n=8, cutoff=0.6)]
    where = f'{prefix} ' if prefix else 'timm, torchvision, fastai or fast_impl '
    hint = f"; closest known names: {', '.join(close)}" if close else ''
    raise UnknownArchError(f"unknown arch {name!r}: no {where}model has this name{hint}")


def on_meta(model: nn.Module) -> bool:
    "True when every parameter and buffer of `model` is on the meta device (holds no memory)"
    return all(t.is_meta for t in [*model.parameters(), *model.buffers()])


def _call(builder: Callable, kwargs: dict, pretrained) -> nn.Module:
    if pretrained is True:
        if 'pretrained' not in inspect.signature(builder).parameters and not _takes_kwargs(builder):
            raise ValueError(f"{arch_name(builder)} has no `pretrained` option; pass a weights file path instead")
        kwargs = {**kwargs, 'pretrained': True}
    m = builder(**kwargs)
    if not isinstance(m, nn.Module):
        raise TypeError(f"{arch_name(builder)} returned {type(m).__name__}, expected an nn.Module")
    return m


def _takes_kwargs(f) -> bool:
    try: return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(f).parameters.values())
    except (TypeError, ValueError): return False


def resolve(arch, device: str | torch.device | None = 'meta', pretrained: bool | str | os.PathLike = False,
            **kwargs) -> nn.Module:
    """Return `arch` as an `nn.Module`.

    Args:
        arch: an `nn.Module` (returned as is), a builder or class, or a registry name: `'convnext_tiny'`,
            `'timm:convnext_tiny'`, `'torchvision:vit_b_16'`, `'fastai:xresnet18'`, `'fast_impl:Plain18Layer'`.
        device: where to build a name or builder; `'meta'` holds no weights. If the builder cannot run on
            meta it is built on the CPU instead, with a warning saying so.
        pretrained: `True` for the registry's own weights (built on the CPU), or a path to a local weights file.
        kwargs: passed to the builder (`num_classes`, ...).
    """
    if isinstance(arch, nn.Module):
        if kwargs: raise TypeError(f"builder arguments {sorted(kwargs)} given with an already built module")
        if pretrained is True:
            raise ValueError(f"{type(arch).__name__} is already built and holds its weights: for the registry's "
                             f"pretrained weights pass its name (e.g. 'resnet50'), or pass a weights file path")
        if pretrained not in (False, None): load_weights(arch, pretrained)
        return arch
    if isinstance(arch, str): builder = _lookup(arch.strip())
    elif callable(arch): builder = arch
    else:
        raise TypeError(f"arch must be an nn.Module, a callable that builds one, or a name such as "
                        f"'resnet50' or 'torchvision:vit_b_16'; got {type(arch).__name__}")
    if pretrained not in (False, None): device = 'cpu'
    model = _build(builder, kwargs, device, pretrained is True)
    if pretrained not in (False, None, True): load_weights(model, pretrained)
    return model


def _build(builder: Callable, kwargs: dict, device, pretrained: bool) -> nn.Module:
    if device is None or torch.device(device).type != 'meta':
        with torch.device(device or 'cpu'): return _call(builder, kwargs, pretrained)
    try:
        with torch.device('meta'): model = _call(builder, kwargs, pretrained)
    except (TypeError, ValueError) as e:
        if 'meta' not in str(e).lower() and 'item' not in str(e).lower(): raise
        model = _cpu_fallback(builder, kwargs, e)
    except (RuntimeError, NotImplementedError) as e: model = _cpu_fallback(builder, kwargs, e)
    return model


def _cpu_fallback(builder, kwargs, err) -> nn.Module:
    warnings.warn(f"{arch_name(builder)} cannot be built on the meta device ({type(err).__name__}: "
                  f"{str(err).splitlines()[0][:120]}); built on the CPU instead, with real weights", stacklevel=4)
    return _call(builder, kwargs, False)


def read_weights(path) -> dict:
    "The state dict in weights file `path` (also inside a checkpoint's 'model'/'state_dict'), without DDP/compile prefixes"
    import re
    if not os.path.isfile(path): raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    sd = torch.load(path, map_location='cpu', weights_only=True)
    for k in ('model', 'state_dict', 'model_state_dict'):
        if isinstance(sd, dict) and isinstance(sd.get(k), dict): sd = sd[k]
    if not isinstance(sd, dict):
        raise ValueError(f"{str(path)!r} holds a {type(sd).__name__}, expected a state dict of tensors")
    return {re.sub(r'^(module\.|_orig_mod\.)+', '', k): v for k, v in sd.items()}


def load_weights(model: nn.Module, path) -> nn.Module:
    "Load a local weights file (a state dict, or a checkpoint holding one under 'model'/'state_dict') into `model`"
    sd, own = read_weights(path), model.state_dict()
    skip = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]  # e.g. a head for other classes
    missing, unexpected = model.load_state_dict({k: v for k, v in sd.items() if k not in skip}, strict=False)
    missing = [k for k in missing if k not in skip]
    if missing or unexpected:
        raise ValueError(f"{str(path)!r} does not fit {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if skip: warnings.warn(f"weights not loaded (shape differs from the model, e.g. a new head): {skip}")
    return model


def arch_name(arch) -> str:
    "A short display name for `arch` (a name, a builder or a module)"
    if isinstance(arch, str): return arch
    if isinstance(arch, nn.Module): return type(arch).__name__
    return getattr(arch, '__name__', None) or type(arch).__name__
