"Forward order: which parameters a forward pass uses first, on meta copies."
# On meta copies nothing is allocated and the model is untouched.
from __future__ import annotations

__all__ = ['Trace', 'trace', 'guess_input_size', 'first_use_order', 'meta_order', 'run_order', 'is_norm',
           'input_sizes']

import itertools, warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import torch
from torch import nn

from ..tree import copy_to, eval_mode
from .blocks import as_model

_META_FUNCS = {'__get__', 'dim', 'size', 'numel', 'ndimension', 'nelement', 'is_floating_point',
               'element_size', 'is_contiguous', 'stride', 'data_ptr', 'requires_grad_', '__len__', 'type',
               'get_device'}


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


# ---------------------------------------------------------------- one recorded forward pass

F = torch.nn.functional
_NORM_FNS = {F.batch_norm, F.group_norm, F.instance_norm}
_ROW_NORM_FNS = {F.layer_norm, getattr(F, 'rms_norm', F.layer_norm)}
_UNARY_FNS = {F.relu, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.relu6, F.leaky_relu, F.elu, F.mish,
              F.dropout, torch.sigmoid, torch.tanh, torch.Tensor.sigmoid, torch.Tensor.tanh,
              torch.Tensor.softmax, F.softmax}
_BINARY_FNS = {torch.add, torch.mul, torch.sub, torch.Tensor.add, torch.Tensor.mul, torch.Tensor.sub,
               torch.Tensor.__add__, torch.Tensor.__mul__, torch.Tensor.__sub__, torch.Tensor.__radd__,
               torch.Tensor.__rmul__}
_MEAN_FNS = {torch.mean, torch.Tensor.mean}
_INPLACE_FNS = {torch.Tensor.add_, torch.Tensor.mul_, torch.Tensor.__iadd__, torch.Tensor.__imul__}


def _shortcut(func, args, kwargs):
    "Output of a common op on meta tensors, made directly from its shape rule; None where it may not hold"
    x = args[0] if args else None
    if not (isinstance(x, torch.Tensor) and x.is_meta): return None
    if func in _ROW_NORM_FNS: return torch.empty(x.shape, dtype=x.dtype, device='meta')  # always contiguous
    if func is F.scaled_dot_product_attention and len(args) > 2 and x.ndim == args[2].ndim:
        return torch.empty(*x.shape[:-1], args[2].shape[-1], dtype=x.dtype, device='meta')
    if func is F.conv2d: return _conv2d(x, args, kwargs)
    if func in _MEAN_FNS: return _reduced(x, args, kwargs)
    if not x.is_contiguous(): return None
    if func is F.interpolate: return _resized(x, args, kwargs)
    # as torch: the input itself, in eval mode
    if func is F.dropout and not kwargs.get('training', True): return x
    if func in _NORM_FNS or func in _UNARY_FNS: return x if kwargs.get('inplace') else torch.empty_like(x)
    if (func is F.linear and len(args) > 1 and args[1].ndim == 2
            and x.ndim and x.shape[-1] == args[1].shape[1]):
        return torch.empty(*x.shape[:-1], args[1].shape[0], dtype=x.dtype, device='meta')
    if func in _BINARY_FNS or func in _INPLACE_FNS:
        y = args[1] if len(args) > 1 else None
        if kwargs or not (isinstance(y, (int, float))
                          or isinstance(y, torch.Tensor) and y.is_meta and y.is_contiguous()):
            return None
        shape = torch.broadcast_shapes(x.shape, y.shape) if isinstance(y, torch.Tensor) else x.shape
        if func in _INPLACE_FNS: return x if shape == x.shape else None
        return torch.empty(shape, dtype=torch.result_type(x, y), device='meta')
    return None


def _pair(v) -> tuple[int, int] | None:
    if isinstance(v, int): return (v, v)
    two_ints = isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v)
    return tuple(v) if two_ints else None


def _conv2d(x: torch.Tensor, args, kwargs) -> torch.Tensor | None:
    "`F.conv2d`'s output, from its size formula (contiguous, as torch makes it for a contiguous input)"
    names = ('input', 'weight', 'bias', 'stride', 'padding', 'dilation', 'groups')
    a = {**dict(zip(names, args)), **kwargs}
    w, pad = a.get('weight'), a.get('padding', 0)
    s, d = _pair(a.get('stride', 1)), _pair(a.get('dilation', 1))
    if (not isinstance(w, torch.Tensor) or w.ndim != 4 or x.ndim != 4 or not x.is_contiguous()
            or not s or not d or x.shape[1] != w.shape[1] * a.get('groups', 1)
            or isinstance(pad, str) and pad != 'valid'): return None
    p = (0, 0) if pad == 'valid' else _pair(pad)
    if p is None: return None
    hw = [(x.shape[2 + i] + 2 * p[i] - d[i] * (w.shape[2 + i] - 1) - 1) // s[i] + 1 for i in (0, 1)]
    return torch.empty(x.shape[0], w.shape[0], *hw, dtype=x.dtype, device='meta') if min(hw) > 0 else None


def _reduced(x: torch.Tensor, args, kwargs) -> torch.Tensor | None:
    "`x.mean(dim, keepdim)`'s output for whole dimensions given as ints"
    dim = kwargs.get('dim', args[1] if len(args) > 1 else None)
    keep = kwargs.get('keepdim', args[2] if len(args) > 2 else False)
    dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, (tuple, list)) else None
    if (not dims or set(kwargs) - {'dim', 'keepdim'}
            or not all(isinstance(i, int) and -x.ndim <= i < x.ndim for i in dims)):
        return None
    dims = {i % x.ndim for i in dims}
    shape = [1 if i in dims else n for i, n in enumerate(x.shape) if keep or i not in dims]
    return torch.empty(shape, dtype=x.dtype, device='meta')


def _resized(x: torch.Tensor, args, kwargs) -> torch.Tensor | None:
    "`F.interpolate`'s output when the size is given (a scale factor needs torch's own rounding rules)"
    size = kwargs.get('size', args[1] if len(args) > 1 else None)
    if size is None: return None
    size = [size] * (x.ndim - 2) if isinstance(size, int) else list(size)
    return torch.empty(*x.shape[:2], *size, dtype=x.dtype, device='meta') if len(size) == x.ndim - 2 else None


def _is_map(t: torch.Tensor, batch: int) -> bool:
    "True for a feature map or token sequence (several positions per sample), False for pooled features"
    return t.ndim >= 2 and (t.shape[0] != batch or sum(d > 1 for d in t.shape[1:]) >= 2)


class _Recorder(torch.overrides.TorchFunctionMode):
    "Record each parameter's first use (by id) and how many had been used at the last op on a feature map"
    def __init__(self, ids: set[int], batch: int, fast: bool):
        super().__init__()
        self.ids, self.batch, self.fast, self.seen, self.mark = ids, batch, fast, {}, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, '__name__', '') in _META_FUNCS: return func(*args, **kwargs)
        on_map = False
        for a in (*args, *kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):
                if id(t) in self.ids:
                    if id(t) not in self.seen: self.seen[id(t)] = len(self.seen)
                elif isinstance(t, torch.Tensor) and not on_map: on_map = _is_map(t, self.batch)
        if on_map: self.mark = len(self.seen)
        out = _shortcut(func, args, kwargs) if self.fast else None
        return func(*args, **kwargs) if out is None else out


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, getattr(nn, 'RMSNorm', nn.LayerNorm))


def is_norm(m: nn.Module) -> bool:
    "True for a norm layer: vectors of its own (a scale, a shift) and no child with parameters"
    # torch's norms, or any class named `*Norm*`
    own = list(m.parameters(recurse=False))
    if not own or any(p.ndim > 1 for p in own) or any(True for c in m.children() for _ in c.parameters()):
        return False
    # timm's BatchNormAct2d, LayerNorm2d, RmsNorm, ...
    return isinstance(m, _NORMS) or 'Norm' in type(m).__name__


def _is_layer(m: nn.Module) -> bool:
    "True for a conv or linear layer: a module holding its own `weight` matrix or kernel, not a norm"
    w = m._parameters.get('weight')
    return w is not None and w.ndim >= 2 and not is_norm(m)


def _first_tensor(x):
    if isinstance(x, torch.Tensor): return x
    if isinstance(x, (list, tuple)): return next((t for t in x if isinstance(t, torch.Tensor)), None)
    return None


@dataclass
class Trace:
    "What one eval forward pass on meta showed: parameters by first use, head start, norms and map sizes"
    order: list[str]  # parameter names by first use (unused ones left out)
    # position in `order` of the first parameter used after the last op on a feature map
    head_from: int | None
    # norm module -> the conv/linear whose output it takes
    norm_of: dict[str, str] = field(default_factory=dict)
    # layer on a map -> its output's positions (H, W)
    size: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @cached_property
    def rank(self) -> dict[str, int]: return {n: i for i, n in enumerate(self.order)}

    @property
    def late(self) -> list[str]:
        "Parameters first used after the last op on a feature map (on pooled features): none without a map"
        return [] if self.head_from is None else self.order[self.head_from:]

    def within(self, prefix: str) -> Trace:
        "This trace seen from the submodule whose names start with `prefix` (names without it)"
        cut = lambda d: {k[len(prefix):]: v[len(prefix):] if isinstance(v, str) else v for k, v in d.items()
                         if k.startswith(prefix) and (not isinstance(v, str) or v.startswith(prefix))}
        order = [n[len(prefix):] for n in self.order if n.startswith(prefix)]
        late = set(self.late)
        head_from = next((i for i, n in enumerate(order) if prefix + n in late),
                         None if self.head_from is None else len(order))
        return Trace(order, head_from, cut(self.norm_of), cut(self.size))


class _Links:
    "Forward hooks: each norm linked to the layer whose output it is the first to take"
    # and each layer's output size on a map
    def __init__(self, batch: int):
        self.outs, self.norm_of, self.size, self.batch = {}, {}, {}, batch

    def hook(self, model: nn.Module, stack: ExitStack) -> None:
        for name, m in model.named_modules():
            if _is_layer(m):
                stack.enter_context(_removing(m.register_forward_pre_hook(self._take)))
                stack.enter_context(_removing(m.register_forward_hook(self._layer(name, m))))
            elif is_norm(m): stack.enter_context(_removing(m.register_forward_pre_hook(self._norm(name))))

    def _take(self, mod, args):
        "A layer takes its input"
        # a norm that takes the same tensor later does not normalise that layer's output alone
        t = _first_tensor(args)
        if t is not None and id(t) in self.outs: self.outs[id(t)] = (None, t)

    def _layer(self, name: str, m: nn.Module):
        k = getattr(m, 'kernel_size', None)
        first = isinstance(m, nn.modules.conv._ConvNd)  # channels first; a linear layer's are last
        def hook(mod, args, out):
            t, x = _first_tensor(out), _first_tensor(args)
            if t is None: return
            # the tensor is kept, so its id is not reused during the pass
            self.outs.setdefault(id(t), (name, t))
            if name in self.size or x is None or not _is_map(x, self.batch) or t.ndim < 3: return
            if not first:
                self.size[name] = tuple(t.shape[1:-1])  # positions: tokens, or pixels of a channels-last map
            elif len(k) == 2: self.size[name] = tuple(t.shape[2:])
        return hook

    def _norm(self, name: str):
        def hook(mod, args):
            t = _first_tensor(args)
            if t is None or id(t) not in self.outs: return
            layer, _ = self.outs[id(t)]
            if layer is not None: self.norm_of.setdefault(name, layer)
            self.outs[id(t)] = (None, t)
        return hook


class _removing:
    "A hook handle as a context manager: removed on exit, whatever happens"
    def __init__(self, handle): self.handle = handle
    def __enter__(self): return self.handle
    def __exit__(self, *exc): self.handle.remove()


def input_sizes(model: nn.Module, input_size: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    "Input sizes to try: the one given, else the arch's own, then sizes fitted to its first layer"
    # its first layer: the first conv, else the first linear
    if input_size: return [tuple(input_size)]
    sizes = [guess_input_size(model)]
    # images meet a conv
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    first = first or next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    if isinstance(first, nn.modules.conv._ConvNd):
        dims = len(first.kernel_size)
        sizes += [(1, first.in_channels, *[side] * dims) for side in ((224, 32, 28) if dims == 2 else (32,))]
    elif isinstance(first, nn.Linear): sizes.append((1, first.in_features))
    return list(dict.fromkeys(sizes))


def trace(model: nn.Module, input_size: Sequence[int] | None = None) -> Trace | None:
    "A `Trace` of an eval forward pass of a meta copy of `model` (batch of 2), None if no input size works"
    all_meta = all(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))
    m = model if all_meta else copy_to(model, 'meta')
    # the shortcuts are exact on the ops they take; if every size fails, retry without them
    for fast in (True, False):
        for size in input_sizes(model, input_size):
            try: return _record(m, torch.zeros(2, *size[1:], device='meta'), fast)
            except Exception: continue
    return None


def _record(model: nn.Module, x: torch.Tensor, fast: bool) -> Trace:
    named = {id(p): n for n, p in model.named_parameters()}
    rec, links = _Recorder(set(named), x.shape[0], fast), _Links(x.shape[0])
    with ExitStack() as stack:
        links.hook(model, stack)
        with eval_mode(model), torch.no_grad(), rec, warnings.catch_warnings():
            warnings.simplefilter('ignore')
            model(x)
    order = [named[i] for i in sorted(rec.seen, key=rec.seen.get)]
    return Trace(order, rec.mark, _adjacent(links.norm_of, order), links.size)


def _adjacent(norm_of: dict[str, str], order: list[str]) -> dict[str, str]:
    "The links where the norm is the next layer with parameters to run after its layer (nothing in between)"
    at = {}
    for i, n in enumerate(order): at.setdefault(n.rpartition('.')[0], []).append(i)
    return {nm: ly for nm, ly in norm_of.items() if nm in at and ly in at and min(at[nm]) == max(at[ly]) + 1}


def guess_input_size(model: nn.Module) -> tuple[int, ...]:
    "An input size `model` accepts: timm's pretrained config, 299 for Inception v3, else (1, 3, 224, 224)"
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    if cfg.get('input_size'): return (1, *cfg['input_size'])
    if type(model).__name__ == 'Inception3': return (1, 3, 299, 299)
    return (1, 3, 224, 224)


def first_use_order(model, input_size: Sequence[int] | None = None, device=None) -> list[str]:
    "Dotted names of the parameters of `model` in the order a forward pass (eval mode) first uses them"
    # unused ones are left out
    model = as_model(model)
    device = device or next(iter(model.parameters()), torch.empty(0, device='meta')).device
    return run_order(model, torch.zeros(*(input_size or guess_input_size(model)), device=device))


def meta_order(model: nn.Module) -> list[str]:
    "`first_use_order` of a copy of `model` with its parameters and buffers on meta: `model` itself untouched"
    all_meta = all(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))
    m = model if all_meta else copy_to(model, 'meta')
    return run_order(m, torch.zeros(*guess_input_size(model), device='meta'))


def run_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    "Parameter names of `model` in first-use order of an eval forward pass on `x`"
    named = {id(p): n for n, p in model.named_parameters()}
    rec = _FirstUse(set(named))
    with eval_mode(model), torch.no_grad(), rec: model(x)
    return [named[i] for i in sorted(rec.seen, key=rec.seen.get)]
