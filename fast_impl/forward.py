"""The forward-pass engine: ONE recorded pass of a model (on meta by default) for every consumer.

It gives what each needs: mult-adds per module, input/output shapes, depth, parameters by first use, norm
links and feature-map sizes (the data: `fast_impl.records`)."""
# Collect only: `summary` computes and renders from a `Recording`; `split` cuts models from its `Trace`.
from __future__ import annotations

__all__ = ['ForwardError', 'Call', 'Trace', 'Recording', 'record', 'run', 'trace', 'first_use_order',
           'eval_hooks', 'CONVENTION']

import warnings
from collections import defaultdict
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry
from torch.utils.weak import WeakTensorKeyDictionary

from .archs import arch_name, resolve
from .checks import check_device
from .inputs import (batch_of, check_dtype, check_input_data, check_size, cpu_model, example_inputs,
                     input_sizes, meta_model, model_on, native_input_size)
from .metashapes import shortcut
from .records import Call, Links, Recording, Trace, adjacent, is_map, shapes
from .tree import eval_mode, unwrap

CONVENTION = ('mult-adds: one per multiply-accumulate of conv, linear, matmul and attention '
              '(torch.utils.flop_counter FLOPs / 2), plus one per bias element added by a conv or linear')

aten = torch.ops.aten
_BIAS_ARG = {aten.convolution: 2, aten._convolution: 2, aten.addmm: 0}  # op -> position of its bias argument
# device kernels of attention that flop_registry lacks, counted by its formula for the same attention on CUDA
_SDPA = flop_registry[aten._scaled_dot_product_flash_attention]
_EXTRA = {getattr(aten, n): _SDPA for n in ('_scaled_dot_product_flash_attention_for_cpu',
                                            '_scaled_dot_product_fused_attention_overrideable',
                                            '_scaled_dot_product_attention_math_for_mps') if hasattr(aten, n)}
# tensor queries that are not operations on the data
_QUERIES = {'__get__', 'dim', 'size', 'numel', 'ndimension', 'nelement', 'is_floating_point', 'element_size',
            'is_contiguous', 'stride', 'data_ptr', 'requires_grad_', '__len__', 'type', 'get_device'}


class ForwardError(RuntimeError):
    "The forward pass failed; `module` is the dotted name of the innermost module that was running"
    def __init__(self, msg: str, module: str, device: str):
        super().__init__(msg)
        self.module, self.device = module, device


# ---------------------------------------------------------------- what the pass records


class _OpCounter(TorchDispatchMode):
    """Adds each op's mult-adds to the innermost running module (`stack[-1]`); given the model's parameter ids
    `params`, also tracks the longest chain of counted ops and the number of counted ops that use a weight"""
    _whole: set = set()  # ops without a formula whose decomposition holds no counted op: run them whole

    def __init__(self, stack: list, params: set | None = None):
        super().__init__()
        self.stack, self.macs, self.counted = stack, defaultdict(int), 0
        self.params, self.weight_ops = params, 0
        self.depth = WeakTensorKeyDictionary() if params is not None else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        pkt = func._overloadpacket
        formula = flop_registry.get(pkt) or _EXTRA.get(pkt)
        # as FlopCounterMode: count what a composite decomposes to
        if formula is None and func not in self._whole:
            before = self.counted
            with self: out = func.decompose(*args, **kwargs)
            if out is NotImplemented or self.counted == before: self._whole.add(func)
            if out is not NotImplemented: return out
        out = func(*args, **kwargs)
        if formula is not None:
            self.macs[self.stack[-1]] += _macs(formula, func, out, args, kwargs)
            self.counted += 1
        if self.depth is not None: self._track(formula is not None, out, (args, kwargs))
        return out

    def _uses_weight(self, args) -> bool:
        return any(isinstance(a, torch.Tensor) and (id(a) in self.params or id(a._base) in self.params)
                   for a in args)

    def _track(self, counted: bool, out, ins):
        if counted and self._uses_weight(ins[0]): self.weight_ops += 1
        tensors = [t for t in tree_leaves(ins) if isinstance(t, torch.Tensor)]
        d = max((self.depth.get(t, 0) for t in tensors), default=0) + counted
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor): self.depth[t] = max(d, self.depth.get(t, 0))

    def longest(self, out) -> int:
        "The most mult-add ops on one path to any tensor in `out` (0 when not tracked)"
        if self.depth is None: return 0
        return max((self.depth.get(t, 0) for t in tree_leaves(out) if isinstance(t, torch.Tensor)), default=0)


def _macs(formula, func, out, args, kwargs) -> int:
    "Mult-adds of one op: flop_counter FLOPs / 2, plus one per bias element a conv or addmm (linear) adds"
    n = formula(*args, **kwargs, out_val=out) // 2
    i = _BIAS_ARG.get(func._overloadpacket)
    if i is not None and len(args) > i and args[i] is not None: n += out.numel()
    return n


class _FirstUse(torch.overrides.TorchFunctionMode):
    "Each parameter's first use (by id), how many were used at the last op on a feature map; shape shortcuts"
    def __init__(self, ids: set[int], batch: int, fast: bool, links: Links):
        super().__init__()
        self.ids, self.batch, self.fast, self.seen, self.mark = ids, batch, fast, {}, None
        self.open = links.open  # outputs whose norm has run: a use here unlinks it
        self.reused = links.reused

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, '__name__', '') in _QUERIES: return func(*args, **kwargs)
        on_map = False
        for a in (*args, *kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):
                if id(t) in self.ids:
                    if id(t) not in self.seen: self.seen[id(t)] = len(self.seen)
                elif isinstance(t, torch.Tensor):
                    if id(t) in self.open: self.reused(id(t))
                    if not on_map: on_map = is_map(t, self.batch)
        if on_map: self.mark = len(self.seen)
        out = shortcut(func, args, kwargs) if self.fast else None
        return func(*args, **kwargs) if out is None else out


# ---------------------------------------------------------------- one pass


@contextmanager
def _no_fast_paths():
    "MultiheadAttention and TransformerEncoder without their fused fast path (one op hiding its matmuls)"
    mha = getattr(torch.backends, 'mha', None)
    old = mha.get_fastpath_enabled() if mha else None
    if mha: mha.set_fastpath_enabled(False)
    try: yield
    finally:
        if mha: mha.set_fastpath_enabled(old)


class _Hooks:
    """Forward pre/post hooks on every module (two global hooks for the pass: no per-module registration): the
    running-module stack, each module's `Call`, the norm links"""
    def __init__(self, model: nn.Module, links: Links | None):
        self.stack, self.calls, self.links = [model], {}, links
        self.watch = Links.kinds(model) if links else {}
        # the model's own modules: one run but not registered (kept in a plain list) counts as its caller
        self.known = set(model.modules())

    def pre(self, m, args):
        if m not in self.known: return
        self.stack.append(m)
        if m in self.watch: self.links.before(*self.watch[m], args)

    def post(self, m, args, kwargs, out):
        if m not in self.known: return
        self.stack.pop()
        c = self.calls.get(m)
        if c is None: c = self.calls[m] = Call(0, shapes((args, kwargs)), shapes(out))  # the first call's
        c.calls += 1
        if m not in self.watch: return
        name, norm = self.watch[m]
        if norm: self.links.ran(name, args)
        else: self.links.after(name, m, args, out)

    def attach(self, stack: ExitStack) -> None:
        stack.callback(register_module_forward_pre_hook(self.pre).remove)
        stack.callback(register_module_forward_hook(self.post, with_kwargs=True).remove)


def record(model: nn.Module, inputs: tuple[tuple, dict], count: bool = True, structure: bool = False,
           order: bool = False, fast: bool = False) -> Recording:
    """Run `model` once (eval mode, no grad) on `inputs` (args, kwargs) where its tensors are, recording
    mult-adds per module (`count`; with depth and weight ops: `structure`) and the `Trace` (`order`; `fast`:
    shape shortcuts on meta). Hooks are always removed and modes restored; an error names the module"""
    args, kwargs = inputs
    batch, named = batch_of(inputs), {id(p): n for n, p in model.named_parameters()}
    links = Links(batch) if order else None
    hooks = _Hooks(model, links)
    counter = _OpCounter(hooks.stack, set(named) if structure else None) if count or structure else None
    first = _FirstUse(set(named), batch, fast, links) if order else None
    device = str(next((t.device for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)), 'cpu'))
    with ExitStack() as stack:
        hooks.attach(stack)
        for ctx in (eval_mode(model), torch.no_grad(), _no_fast_paths(), first, counter,
                    _quiet() if order else None):
            if ctx is not None: stack.enter_context(ctx)
        try: out = model(*args, **kwargs)
        except Exception as e: raise _forward_error(e, model, hooks.stack[-1], device) from e
    tr = None
    if order:
        ranked = [named[i] for i in sorted(first.seen, key=first.seen.get)]
        tr = Trace(ranked, first.mark, adjacent(hooks.links.norm_of, ranked), hooks.links.size)
    macs, depth, ops = ((dict(counter.macs), counter.longest(out), counter.weight_ops) if counter
                        else ({}, 0, 0))
    return Recording(model, device, shapes(inputs), shapes(out), hooks.calls, macs, depth, ops, tr)


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        yield


def eval_hooks(m: nn.Module) -> tuple:
    "Hooks running `m`'s forward in eval mode whatever its `training` flag (trainers call `train()` at will)"
    # for a frozen batch norm: the same function in training and evaluation, its statistics kept
    return m.register_forward_pre_hook(_eval_on), m.register_forward_hook(_eval_off)


def _eval_on(m: nn.Module, args) -> None:
    m._fast_impl_mode, m.training = m.training, False


def _eval_off(m: nn.Module, args, out) -> None:
    m.training = m.__dict__.pop('_fast_impl_mode', m.training)


def _forward_error(e: Exception, model: nn.Module, where: nn.Module, device) -> ForwardError:
    name = next((n for n, m in model.named_modules() if m is where), '')
    at = f"module '{name}' ({type(where).__name__})" if name else f'the root module ({type(where).__name__})'
    why = str(e).splitlines()[0] if str(e).strip() else '(no message: an assert on the input, its size maybe)'
    return ForwardError(f"forward pass on {device} failed in {at}: {type(e).__name__}: {why}", name,
                        str(device))

# ---------------------------------------------------------------- entry points


def _meta_only(e: BaseException | None) -> bool:
    "True when error `e` comes from the meta device (data-dependent ops), so a CPU pass may succeed"
    msg = str(e).lower()
    return (isinstance(e, NotImplementedError)
            or any(s in msg for s in ('meta', 'data-dependent', 'data dependent')))


def _first_run(sizes: list, attempt, stop=lambda e: False):
    """`attempt(size)` of the first of `sizes` that runs; else the first `ForwardError` is raised (at once
    where `stop(error)`), with the `size` it came from"""
    first = None
    for size in sizes:
        try: return attempt(size)
        except ForwardError as e:
            e.size = size
            if stop(e): raise
            first = first or e
    raise first


def run(arch, input_size=None, input_data=None, device='meta', dtype=torch.float32,
        kwargs: dict | None = None, structure: bool = False, order: bool = False) -> Recording:
    """One counted pass of `arch` on `device` (input: `input_data`, else `input_size`, else the size the arch
    is made for); on meta, falls back to the CPU when the model needs real data"""
    dev, dtype, kwargs = check_device(device), check_dtype(dtype), kwargs or {}
    if input_size is not None and input_data is None: check_size(input_size)
    model = model_on(arch, dev, kwargs)
    given = input_size is not None or input_data is not None
    sizes = [input_size] if given else input_sizes(model, arch, kwargs)
    on = lambda m, d: lambda size: record(m, example_inputs(size, input_data, d, dtype), structure=structure,
                                          order=order)
    meta_only = lambda e: dev.type == 'meta' and _meta_only(e.__cause__)
    try: return _first_run(sizes, on(model, dev), meta_only)
    except ForwardError as e:
        if not meta_only(e): raise _size_hint(e, model, arch, input_size, input_data) from e.__cause__
        first = e
    warnings.warn(f"{arch_name(arch)} cannot run on the meta device ({first}); "
                  "ran on the CPU with real weights", stacklevel=3)
    model = cpu_model(arch, kwargs)
    try: return on(model, torch.device('cpu'))(first.size)
    except ForwardError as e: raise _size_hint(e, model, arch, input_size, input_data) from e.__cause__


def _size_hint(e: ForwardError, model: nn.Module, arch, input_size, input_data) -> ForwardError:
    "`e`, its message ending with the input to give: the size the arch is made for, else one of its rank"
    if input_data is not None: return e
    if not e.module and isinstance(e.__cause__, TypeError) and 'argument' in str(e.__cause__):
        e.args = (f"{e.args[0]} ({arch_name(arch)} takes other inputs than one tensor: give input_data=, "
                  f"a tuple of its positional inputs or a dict of its keyword inputs)",)
        return e
    native, best = native_input_size(model, arch), input_sizes(model, arch)[0]
    if input_size is not None and (tuple(input_size) == tuple(best) or native is None
                                   and len(check_size(input_size)[0]) == len(best)): return e
    given = f"the input was {list(input_size)}; " if input_size is not None else ''
    made = 'is made for' if native else 'may take'
    e.args = (f"{e.args[0]} ({given}{arch_name(arch)} {made} {list(best)}: give input_size={tuple(best)}, "
              f"or --input {','.join(map(str, best))} on the command line)",)
    return e


def trace(model: nn.Module, input_size=None, input_data=None) -> Trace | None:
    "The `Trace` of an eval pass of a meta copy of `model` (batch of 2), None if no input works"
    m, meta = meta_model(model), torch.device('meta')
    if input_data is not None: check_input_data(input_data)
    elif input_size is not None: check_size(input_size)
    sizes = [input_size] if input_size is not None else input_sizes(model)
    if input_data is not None: sizes = [None]
    # the shortcuts are exact on the ops they take; if every size fails, retry without them
    for fast in (True, False):
        try: return _first_run(sizes, lambda s: record(m, example_inputs(s, input_data, meta, batch=2), False,
                                                       order=True, fast=fast).trace)
        except ForwardError: continue
    return None


def first_use_order(model: nn.Module, input_size=None, input_data=None) -> list[str]:
    "Dotted names of the parameters of `model` in the order an eval forward pass first uses them"
    # the pass runs where `model` is
    model = unwrap(resolve(model))
    dev = next(iter(model.parameters()), torch.empty(0, device='meta')).device
    sizes = input_sizes(model) if input_size is None and input_data is None else [input_size]
    return _first_run(sizes, lambda s: record(model, example_inputs(s, input_data, dev), False,
                                              order=True).trace.order)
