"Forward order: which parameters a forward pass uses first, on meta copies (nothing allocated, the model untouched)."
from __future__ import annotations

__all__ = ['guess_input_size', 'first_use_order', 'meta_order', 'run_order']

import itertools
from typing import Sequence

import torch
from torch import nn

from ..tree import copy_to, eval_mode
from .blocks import as_model

_META_FUNCS = {'__get__', 'dim', 'size', 'numel', 'ndimension', 'nelement', 'is_floating_point', 'element_size',
               'is_contiguous', 'stride', 'data_ptr', 'requires_grad_', '__len__', 'type', 'get_device'}


class _FirstUse(torch.overrides.TorchFunctionMode):
    "Record, by id, the first time each tensor in `ids` is the input of a torch operation"
    def __init__(self, ids: set[int]):
        super().__init__()
        self.ids, self.seen = ids, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, '__name__', '') not in _META_FUNCS:
            for a in (*args, *kwargs.values()):
                for t in (a if isinstance(a, (list, tuple)) else (a,)):
                    if id(t) in self.ids and id(t) not in self.seen: self.seen[id(t)] = len(self.seen)
        return func(*args, **kwargs)


def guess_input_size(model: nn.Module) -> tuple[int, ...]:
    "An input size `model` accepts: timm's pretrained config, 299 for Inception v3, else (1, 3, 224, 224)"
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    if cfg.get('input_size'): return (1, *cfg['input_size'])
    if type(model).__name__ == 'Inception3': return (1, 3, 299, 299)
    return (1, 3, 224, 224)


def first_use_order(model, input_size: Sequence[int] | None = None, device=None) -> list[str]:
    "Dotted names of the parameters of `model` in the order a forward pass (eval mode) first uses them; unused ones left out"
    model = as_model(model)
    device = device or next(iter(model.parameters()), torch.empty(0, device='meta')).device
    return run_order(model, torch.zeros(*(input_size or guess_input_size(model)), device=device))


def meta_order(model: nn.Module) -> list[str]:
    "`first_use_order` of a copy of `model` with its parameters and buffers on meta: `model` itself is not touched"
    m = model if all(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())) else copy_to(model, 'meta')
    return run_order(m, torch.zeros(*guess_input_size(model), device='meta'))


def run_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    "Parameter names of `model` in first-use order of an eval forward pass on `x`"
    named = {id(p): n for n, p in model.named_parameters()}
    rec = _FirstUse(set(named))
    with eval_mode(model), torch.no_grad(), rec: model(x)
    return [named[i] for i in sorted(rec.seen, key=rec.seen.get)]
