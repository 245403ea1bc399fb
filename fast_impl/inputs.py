"""Example inputs for the forward pass.

One input-size guess, `input_data` moved where the model is, meta copies."""
from __future__ import annotations

__all__ = ['native_input_size', 'input_sizes', 'check_size', 'check_dtype', 'check_input_data',
           'example_inputs', 'batch_of',
           'model_on', 'cpu_model', 'meta_model']

import copy, functools, inspect, sys
from typing import Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from .archs import resolve
from .tree import copy_to, unwrap

# ---------------------------------------------------------------- the size a model is made for


def native_input_size(model: nn.Module, arch=None) -> tuple[int, ...] | None:
    """The input size (batch 1) `model` is made for: its patch embedding's `img_size` (timm) or `image_size`
    (torchvision ViT), timm's `pretrained_cfg`, a Hugging Face `config.image_size`, or the crop size of the
    default torchvision weights of `arch` (or of the builder that makes `model`'s class); else None"""
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    chans = cfg['input_size'][0] if cfg.get('input_size') else 3
    embed = getattr(model, 'patch_embed', None)
    side = _side(getattr(embed, 'img_size', None)) or _side(getattr(model, 'image_size', None))
    if side: return (1, chans, *side)
    hf = _hf_size(model)
    if hf: return hf
    if cfg.get('input_size'): return (1, *cfg['input_size'])
    side = _side(_torchvision_crop(arch if arch is not None else model))
    return (1, 3, *side) if side else None


def _hf_size(model: nn.Module) -> tuple[int, ...] | None:
    """(1, num_channels, *image_size) of the first Hugging Face config that states an image size: the model's,
    else the vision or backbone config it holds"""
    c = getattr(model, 'config', None)
    for x in (c, getattr(c, 'vision_config', None), getattr(c, 'backbone_config', None)):
        side, ch = _side(getattr(x, 'image_size', None)), getattr(x, 'num_channels', 3)
        if side: return (1, ch if isinstance(ch, int) and not isinstance(ch, bool) and ch > 0 else 3, *side)
    return None


def _side(s) -> tuple[int, int] | None:
    "`s` as (height, width): from an int or a pair of ints; None otherwise"
    if isinstance(s, int) and not isinstance(s, bool) and s > 0: return (s, s)
    pair = isinstance(s, (tuple, list)) and len(s) == 2
    if pair and all(isinstance(i, int) and i > 0 for i in s): return tuple(s)
    return None


def _torchvision_crop(arch):
    "The crop (else resize) size of the default torchvision weights of `arch` (a name, builder or model)"
    if 'torchvision' not in sys.modules: return None
    import torchvision
    if isinstance(arch, nn.Module): arch = _torchvision_builder_of(type(arch))
    if isinstance(arch, str):
        name = arch.strip().rpartition(':')[2].lower()
        if (arch.startswith(('timm:', 'fastai:', 'fast_impl:'))
                or name not in torchvision.models.list_models()):
            return None
        arch = name
    if arch is None or not (isinstance(arch, str) or callable(arch)): return None
    try: weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError, TypeError): return None
    kw = getattr(weights.transforms, 'keywords', {}) or {}
    return kw.get('crop_size') or kw.get('resize_size')


@functools.lru_cache(maxsize=None)
def _torchvision_builder_of(cls: type) -> str | None:
    "The torchvision builder whose return annotation is `cls` (a model built by hand from torchvision)"
    if not cls.__module__.startswith('torchvision.models'): return None
    import torchvision
    for name in torchvision.models.list_models():
        ret = inspect.signature(torchvision.models.get_model_builder(name)).return_annotation
        if ret is cls or (isinstance(ret, str) and ret == cls.__name__): return name
    return None

# ---------------------------------------------------------------- sizes to try


def _first_layer(model: nn.Module) -> nn.Module | None:
    "The first conv in registration order, else the first recurrent layer, else the first linear layer"
    for kind in (nn.modules.conv._ConvNd, nn.RNNBase, nn.Linear):
        first = next((m for m in model.modules() if isinstance(m, kind)), None)
        if first is not None: return first
    return None


def input_sizes(model: nn.Module, arch=None, kwargs: dict | None = None) -> list[tuple[int, ...]]:
    """Input sizes to try, best first.

    The builder's `img_size`, the size the arch is made for, an RGB image of 224 (for image models), then
    sizes fitted to its first layer (its channels and rank: 224, 32, 28 pixels; a video conv gets 16
    frames)"""
    side = next((v for k, v in (kwargs or {}).items() if k in ('img_size', 'image_size')), None)
    first, sizes = _first_layer(model), []
    if isinstance(side, int): sizes.append((1, 3, side, side))
    native = native_input_size(model, arch)
    dims = len(first.kernel_size) if isinstance(first, nn.modules.conv._ConvNd) else 2
    if native and dims == 3 and len(native) == 4: native = (*native[:2], 16, *native[2:])
    if native: sizes.append(native)
    if dims == 2 and not isinstance(first, (nn.Linear, nn.RNNBase)): sizes.append((1, 3, 224, 224))
    if isinstance(first, nn.modules.conv._ConvNd):
        sides = (224, 32, 28) if dims == 2 else (112, 32) if dims == 3 else (224,)
        sizes += [(1, first.in_channels, *(((16,) if dims == 3 else ()) + (s,) * min(dims, 2)))
                  for s in sides]
    elif isinstance(first, nn.RNNBase):  # a sequence of 16 steps
        sizes.append((1, 16, first.input_size) if first.batch_first else (16, 1, first.input_size))
    elif isinstance(first, nn.Linear): sizes.append((1, first.in_features))
    return list(dict.fromkeys(sizes or [(1, 3, 224, 224)]))

# ---------------------------------------------------------------- inputs


def _is_shape(s) -> bool:
    return (isinstance(s, (tuple, list, torch.Size)) and len(s) > 0
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s))


def check_size(size) -> list[tuple[int, ...]]:
    "`size` as a list of shapes: one shape of positive ints, or a list of shapes for several inputs"
    if _is_shape(size): return [tuple(size)]
    if isinstance(size, (list, tuple)) and size and all(_is_shape(s) for s in size):
        return [tuple(s) for s in size]
    raise TypeError(f"input_size must be a shape of positive ints such as (1, 3, 224, 224), or a list of "
                    f"shapes for a model with several inputs; got {size!r}")


def check_dtype(dtype) -> torch.dtype:
    "`dtype` when it is a floating torch dtype; else a `TypeError`"
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point: return dtype
    raise TypeError(f"dtype must be a floating torch dtype such as torch.float32 or torch.bfloat16; "
                    f"got {dtype!r}")


def _move(x, device: torch.device):
    "Tensor `x` on `device` (a meta tensor becomes random/zero data of its shape); anything else as is"
    if not isinstance(x, torch.Tensor): return x
    if type(x) is not torch.Tensor and not isinstance(x, nn.Parameter):
        x = x.as_subclass(torch.Tensor)  # fastai's TensorImage & co: their own __torch_function__ stays out
    if x.device == device: return x
    if x.is_meta and device.type != 'meta':
        if x.is_floating_point(): return torch.randn(x.shape, dtype=x.dtype, device=device)
        return torch.zeros_like(x, device=device)
    return x.to(device)


def example_inputs(input_size, input_data, device: torch.device, dtype=torch.float32,
                   batch: int | None = None) -> tuple[tuple, dict]:
    """Positional and keyword inputs: `input_data` (a tensor, a tuple of positional inputs or a dict of
    keyword inputs; ints allowed) moved to `device`, else random tensors of `input_size` (batch `batch`)"""
    if input_data is None:
        sizes = [(batch or s[0], *s[1:]) for s in check_size(input_size)]
        return tuple(torch.randn(s, dtype=dtype, device=device) for s in sizes), {}
    data = tree_map(functools.partial(_move, device=device), check_input_data(input_data))
    if isinstance(data, dict): return (), data
    return (tuple(data) if isinstance(data, (list, tuple)) else (data,)), {}


def check_input_data(x):
    "`x` when it is a tensor, or a tuple/list/dict holding tensors; else one `TypeError` saying what is valid"
    if isinstance(x, torch.Tensor) or (isinstance(x, (tuple, list, dict))
                                       and any(isinstance(t, torch.Tensor) for t in tree_leaves(x))): return x
    raise TypeError(f"input_data must be a tensor, a tuple of positional inputs or a dict of keyword inputs "
                    f"holding tensors (ints allowed: token ids); got {type(x).__name__}")


def batch_of(inputs: tuple[tuple, dict]) -> int:
    "The batch size of example inputs: the first dimension of their first tensor (1 without one)"
    t = next((t for t in tree_leaves(inputs) if isinstance(t, torch.Tensor) and t.ndim), None)
    return t.shape[0] if t is not None else 1

# ---------------------------------------------------------------- the model on a device


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _is_on(model: nn.Module, device: torch.device) -> bool:
    "True when every tensor of `model` is on `device` (a module without tensors is anywhere)"
    return all(t.device.type == device.type and device.index in (None, t.device.index)
               for t in _tensors(model))


def meta_model(model: nn.Module) -> nn.Module:
    "`model` itself when all its tensors are on meta, else a meta copy (`model` is never changed)"
    return model if _is_on(model, torch.device('meta')) else copy_to(model, 'meta')


def model_on(arch, device: torch.device, kwargs: dict) -> nn.Module:
    "`arch` as a module on `device`"
    # a given module is used where it is on `device`, else copied (never changed)
    if isinstance(arch, nn.Module):
        model = unwrap(resolve(arch, **kwargs))
        return model if _is_on(model, device) else copy_to(model, device)
    model = unwrap(resolve(arch, device=device, **kwargs))
    return model if _is_on(model, device) else model.to(device)  # built by us: free to move


def _materialize(model: nn.Module) -> nn.Module:
    "A CPU copy of meta `model` with freshly initialised weights"
    m = copy.deepcopy(model).to_empty(device='cpu')
    with torch.no_grad():
        for t in _tensors(m): t.normal_(0, 0.02) if t.is_floating_point() else t.zero_()
        for x in m.modules():
            if hasattr(x, 'reset_parameters'):
                try: x.reset_parameters()
                except Exception: pass
    return m


def cpu_model(arch, kwargs: dict) -> nn.Module:
    "`arch` with real weights on the CPU, for models whose forward pass cannot run on meta"
    cpu = torch.device('cpu')
    if not isinstance(arch, nn.Module): return unwrap(resolve(arch, device=cpu, **kwargs))
    model = unwrap(arch)
    if any(t.is_meta for t in _tensors(model)): return _materialize(model)
    return model if _is_on(model, cpu) else copy_to(model, cpu)
