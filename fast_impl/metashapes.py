"Output shapes of common ops on meta tensors, made directly from their shape rules (a faster meta pass)."
# Each rule is exact where it applies and returns None where it may not hold; the engine then runs the op.
from __future__ import annotations

__all__ = ['shortcut']

import torch

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


def shortcut(func, args, kwargs):
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
