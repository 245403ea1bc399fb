"""Turn an arch (module, builder, or registry name) into an `nn.Module`.

Built on the meta device unless told otherwise."""
from __future__ import annotations

__all__ = ['resolve', 'arch_name', 'UnknownArchError', 'WeightsUnavailableError', 'register_source',
           'SOURCES', 'known_names', 'on_meta', 'load_weights', 'read_weights', 'check_pretrained',
           'reachable', 'fail_fast_offline']

import difflib, inspect, os, socket, sys, urllib.parse, urllib.request, warnings
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from .checks import check_device
from .registry import Registry

SOURCES = Registry('arch source')  # prefix -> function(name) returning a builder or None


class UnknownArchError(ValueError):
    "An arch name that no registry (timm, torchvision, fastai, fast_impl) knows"


class WeightsUnavailableError(OSError):
    "The registry's pretrained weights could not be fetched (no network, say) and are not in the local cache"


def register_source(prefix: str):
    "Decorator: register `f(name) -> builder | None` as the lookup for names written `prefix:name`"
    # a taken prefix is an error
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
    arch, _, tag = name.partition('.')
    if not timm.is_model(arch): return None
    if tag: _check_tag(arch, tag)
    def build(pretrained=False, **kw): return timm.create_model(name, pretrained=pretrained, **kw)
    build.__name__ = name
    return build


def _check_tag(arch: str, tag: str):
    "Raise `UnknownArchError` unless timm has pretrained weights tagged `tag` for `arch`"
    from timm.models import get_arch_pretrained_cfgs
    tags = [t.partition('.')[2] for t in get_arch_pretrained_cfgs(arch)]
    if tag not in tags:
        raise UnknownArchError(f"timm has no weights tagged {tag!r} for {arch}; "
                               f"valid tags: {', '.join(tags) or 'none'}")


@register_source('torchvision')
def _torchvision_builder(name: str):
    import torchvision
    if name.lower() not in torchvision.models.list_models(): return None
    def build(pretrained=False, **kw):
        takes_backbone = 'weights_backbone' in _params(torchvision.models.get_model_builder(name.lower()))
        if not pretrained and takes_backbone:
            kw.setdefault('weights_backbone', None)  # segmentation/detection: no ImageNet backbone download
        return torchvision.models.get_model(name.lower(), weights='DEFAULT' if pretrained else None, **kw)
    build.__name__ = name
    return build


def _params(f) -> dict:
    "The parameters of callable `f` by name (empty when it has no signature)"
    try: return dict(inspect.signature(f).parameters)
    except (TypeError, ValueError): return {}


def _xresnet_names() -> list[str]:
    "fastai's xresnet family, read from the source's `__all__`: importing fastai takes seconds"
    import ast, importlib.util
    spec = importlib.util.find_spec('fastai')
    if spec is None or not spec.submodule_search_locations: return []
    path = os.path.join(list(spec.submodule_search_locations)[0], 'vision', 'models', 'xresnet.py')
    try:
        with open(path) as f: tree = ast.parse(f.read())
    except (OSError, SyntaxError): return []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', '') == '__all__' for t in node.targets):
            return [n for n in ast.literal_eval(node.value) if n.startswith('x')]
    return []


@register_source('fastai')
def _fastai_builder(name: str):
    if name not in _xresnet_names(): return None
    from .fastai.xresnet import xresnet
    return xresnet(name)


def known_names(prefix: str | None = None) -> list[str]:
    "Every arch name the registries know (for `prefix` only, when given), as `prefix:name`"
    lists = {'fast_impl': lambda: [n for n in __import__('fast_impl.models', fromlist=['x']).__all__
                                   if _fast_impl_builder(n)],
             'timm': lambda: _timm().list_models(),
             'torchvision': lambda: __import__('torchvision').models.list_models(),
             'fastai': _xresnet_names}
    return [f'{p}:{n}' for p, f in lists.items() if prefix in (None, p) for n in f()]


def _lookup(name: str) -> Callable:
    "The builder for a registry `name`, written `prefix:name` or bare"
    # a bare name is looked up in fast_impl, timm, torchvision, fastai, in turn
    prefix, _, bare = name.rpartition(':')
    if prefix and prefix not in SOURCES:
        raise UnknownArchError(f"unknown arch source {prefix!r} in {name!r}; "
                               f"valid prefixes: {', '.join(SOURCES)}")
    for p in ([prefix] if prefix else list(SOURCES)):
        builder = SOURCES[p](bare)
        if builder is not None: return builder
    where = f'{prefix} ' if prefix else 'timm, torchvision, fastai or fast_impl '
    close = _suggestions(bare, prefix or None)
    hint = f"; closest known names: {', '.join(close)}" if close else ''
    raise UnknownArchError(f"unknown arch {name!r}: no {where}model has this name{hint}")


def _suggestions(bare: str, prefix: str | None, n: int = 8) -> list[str]:
    "Known names near `bare`: those it begins (shortest first), then difflib's close matches; with sources"
    names = {}
    for full in known_names(prefix):
        src, _, nm = full.partition(':')
        names.setdefault(nm, []).append(src)
    low = bare.lower()
    starts = sorted((k for k in names if k.lower().startswith(low)), key=lambda k: (len(k), k))
    close = difflib.get_close_matches(bare, list(names), n=n, cutoff=0.6)
    picks = list(dict.fromkeys(starts[:n // 2] + close + starts[n // 2:]))[:n]
    return [f"{k} ({', '.join(names[k])})" for k in picks]


def on_meta(model: nn.Module) -> bool:
    "True when every parameter and buffer of `model` is on the meta device (holds no memory)"
    return all(t.is_meta for t in [*model.parameters(), *model.buffers()])


def _call(builder: Callable, kwargs: dict, pretrained) -> nn.Module:
    if pretrained is True:
        if 'pretrained' not in _params(builder) and not _takes_kwargs(builder):
            raise ValueError(f"{arch_name(builder)} has no `pretrained` option; "
                             "pass a weights file path instead")
        kwargs = {**kwargs, 'pretrained': True}
    m = builder(**kwargs)
    if not isinstance(m, nn.Module):
        raise TypeError(f"{arch_name(builder)} returned {type(m).__name__}, expected an nn.Module")
    return m


def _takes_kwargs(f) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in _params(f).values())


def check_pretrained(pretrained):
    "`pretrained` if it is True, False, None or a path (str, `os.PathLike`); else a `TypeError` naming those"
    path = isinstance(pretrained, os.PathLike) or (isinstance(pretrained, str) and pretrained != '')
    if not (path or isinstance(pretrained, bool) or pretrained is None):
        raise TypeError(f"pretrained must be True (the registry's weights), False, or the path of a local "
                        f"weights file; got {pretrained!r}")
    return pretrained


def resolve(arch, device: str | torch.device | None = 'meta', pretrained: bool | str | os.PathLike = False,
            **kwargs) -> nn.Module:
    """Return `arch` as an `nn.Module`.

    Args:
        arch: an `nn.Module` (returned as is), a builder or class, or a registry name: `'convnext_tiny'`,
            `'timm:convnext_tiny'`, `'torchvision:vit_b_16'`, `'fastai:xresnet18'`,
            `'fast_impl:Plain18Layer'`.
        device: where to build a name or builder; `'meta'` holds no weights. If the builder cannot run on
            meta it is built on the CPU instead, with a warning saying so.
        pretrained: `True` for the registry's own weights (built on the CPU; with no network a
            `WeightsUnavailableError` within seconds), or a path to a local weights file.
        kwargs: passed to the builder (`num_classes`, ...).
    """
    check_pretrained(pretrained)
    if device is not None: check_device(device)  # one line for a device this machine lacks
    if isinstance(arch, nn.Module):
        if kwargs: raise TypeError(f"builder arguments {sorted(kwargs)} given with an already built module")
        if pretrained is True:
            raise ValueError(f"{type(arch).__name__} is already built and holds its weights: for the "
                             f"registry's pretrained weights pass its name (e.g. 'resnet50'), or pass a "
                             f"weights file path")
        if pretrained not in (False, None): load_weights(arch, pretrained)
        return arch
    if isinstance(arch, str): builder = _lookup(arch.strip())
    elif callable(arch): builder = arch
    else:
        raise TypeError(f"arch must be an nn.Module, a callable that builds one, or a name such as "
                        f"'resnet50' or 'torchvision:vit_b_16'; got {type(arch).__name__}")
    if pretrained is True: return _fetch(builder, kwargs, arch_name(arch))
    model = _build(builder, kwargs, 'cpu' if pretrained else device)
    if pretrained: load_weights(model, pretrained)
    return model


def _build(builder: Callable, kwargs: dict, device) -> nn.Module:
    "`builder(**kwargs)` on `device`; on meta, on the CPU (with a warning) if the builder needs real data"
    if device is None or torch.device(device).type != 'meta':
        with torch.device(device or 'cpu'): return _call(builder, kwargs, False)
    try:
        with torch.device('meta'): return _call(builder, kwargs, False)
    except (TypeError, ValueError) as e:
        if 'meta' not in str(e).lower() and 'item' not in str(e).lower(): raise
        return _cpu_fallback(builder, kwargs, e)
    except (RuntimeError, NotImplementedError) as e: return _cpu_fallback(builder, kwargs, e)


def _cpu_fallback(builder, kwargs, err) -> nn.Module:
    "`builder` run on the CPU after failing on meta with `err`; warns only once the CPU build has worked"
    try: model = _call(builder, kwargs, False)
    except Exception: raise err from None  # fails on the CPU too: not a meta problem, no false warning
    why = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    warnings.warn(f"{arch_name(builder)} cannot be built on the meta device ({why}); built on the CPU "
                  f"instead, with real weights", stacklevel=5)
    return model

# ---------------------------------------------------------------- the registry's pretrained weights


def _fetch(builder: Callable, kwargs: dict, shown: str) -> nn.Module:
    "`builder` (named `shown`) with the registry's weights, on the CPU; offline, a one-line error in seconds"
    try:
        with torch.device('cpu'), fail_fast_offline(): return _call(builder, kwargs, True)
    except OSError as e:
        msg = str(e).splitlines()[0] if str(e) else ''
        raise WeightsUnavailableError(
            f"could not fetch the pretrained weights of {shown} ({type(e).__name__}: {msg[:100]}); "
            f"they are not in the local cache and the download failed (no network?): download them where "
            f"there is a network, or pass a local weights file: pretrained='path/to/weights.pth'") from e


def reachable(url: str, timeout: float) -> bool:
    "True when a TCP connection to the host of `url` (or to the HTTPS proxy in use) opens within `timeout` s"
    proxy = urllib.request.getproxies().get('https')
    host = urllib.parse.urlsplit(proxy if proxy and not urllib.request.proxy_bypass(url) else url)
    try:
        with socket.create_connection((host.hostname, host.port or 443), timeout=timeout): return True
    except OSError: return False


@contextmanager
def fail_fast_offline(timeout: float = 5., hub: bool = True):
    """Downloads in the block give up within seconds with no network, never hang: sockets time out after
    `timeout` s without data (torch.hub, fastai's `untar_data`) unless a timeout is set already; with `hub`,
    huggingface_hub goes offline (its cache only, no retries for a minute) when its host is unreachable"""
    hf = _hf_hub() if hub else None
    offline = hf is not None and not hf.HF_HUB_OFFLINE and not reachable(hf.ENDPOINT, timeout)
    old = socket.getdefaulttimeout()
    if old is None: socket.setdefaulttimeout(timeout)
    if offline: hf.HF_HUB_OFFLINE = True
    try: yield
    finally:
        socket.setdefaulttimeout(old)
        if offline: hf.HF_HUB_OFFLINE = False


def _hf_hub():
    "huggingface_hub's constants module, or None where it is not installed"
    try: from huggingface_hub import constants
    except ImportError: return None
    return constants

# ---------------------------------------------------------------- local weights files


def read_weights(path) -> dict:
    "The state dict in weights file `path`, without DDP/compile prefixes"
    # also a state dict inside a checkpoint's 'model'/'state_dict'
    import re
    sd = _load_file(path)
    for k in ('model', 'state_dict', 'model_state_dict'):
        if isinstance(sd, dict) and isinstance(sd.get(k), dict): sd = sd[k]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{str(path)!r} holds a {type(sd).__name__}, expected a state dict of tensors")
    return {re.sub(r'^(module\.|_orig_mod\.)+', '', k): v for k, v in sd.items()}


def _load_file(path):
    "The object saved in `path` (torch.save or safetensors), or an error saying why it is not a weights file"
    if os.path.isdir(path):
        raise IsADirectoryError(f"weights file {str(path)!r} is a directory; pass the weights file inside it "
                                f"(.pth, .pt, .bin or .safetensors)")
    if not os.path.isfile(path): raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        if str(path).endswith('.safetensors'):
            from safetensors.torch import load_file
            return load_file(path)
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a weights file that torch.load or safetensors can read "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})") from e


def load_weights(model: nn.Module, path) -> nn.Module:
    "Load a local weights file (a state dict, or a checkpoint holding one) into `model`"
    # a checkpoint holds its state dict under 'model'/'state_dict'
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
