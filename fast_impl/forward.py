"""The forward-pass engine: ONE recorded pass of a model (on meta by default) for every consumer.

It gives what each needs: mult-adds per module, input/output shapes, depth, parameters by first use, norm
links and feature-map sizes."""
# Collect only: `summary` computes and renders from a `Recording`; `split` cuts models from its `Trace`.
from __future__ import annotations

__all__ = ['ForwardError', 'Call', 'Trace', 'Recording', 'record', 'run', 'trace', 'first_use_order',
           'eval_hooks', 'CONVENTION']

import warnings
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry
from torch.utils.weak import WeakTensorKeyDictionary

from .archs import arch_name, resolve
from .checks import check_device
from .inputs import (batch_of, check_dtype, check_input_data, check_size, cpu_model, example_inputs,
                     input_sizes, meta_model, model_on, native_input_size)
from .layers import is_layer, is_norm
from .metashapes import shortcut
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


@dataclass
class Call:
    "What the pass saw of one module: number of calls, input and output shapes of the first call"
    calls: int = 0
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


@dataclass
class Trace:
    "The order of the pass: parameters by first use, where the head starts, norms' layers, feature-map sizes"
    order: list[str]  # parameter names by first use (unused ones left out)
    # position in `order` of the first parameter used after the last op on a feature map
    head_from: int | None
    # norm module -> the conv/linear whose output it takes
    norm_of: dict[str, str] = field(default_factory=dict)
    size: dict[str, tuple[int, ...]] = field(default_factory=dict)  # layer on a map -> its output's positions

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


@dataclass
class Recording:
    "Everything one forward pass recorded"
    model: nn.Module
    device: str
    inputs: list  # shapes of every input tensor
    outputs: list  # shapes of every output tensor
    calls: dict  # module -> Call
    macs: dict = field(default_factory=dict)  # module -> mult-adds of its own ops
    depth: int = 0  # most counted ops on one path (with `structure`)
    weight_ops: int = 0  # counted ops that use a weight of the model (with `structure`)
    trace: Trace | None = None  # with `order`


def _shapes(x) -> list[list[int]]:
    "Shapes of every tensor in the (nested) structure `x`"
    return [list(t.shape) for t in tree_leaves(x) if isinstance(t, torch.Tensor)]


def _is_map(t: torch.Tensor, batch: int) -> bool:
    "True for a feature map or token sequence (several positions per sample), False for pooled features"
    return t.ndim >= 2 and (t.shape[0] != batch or sum(d > 1 for d in t.shape[1:]) >= 2)

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
    def __init__(self, ids: set[int], batch: int, fast: bool):
        super().__init__()
        self.ids, self.batch, self.fast, self.seen, self.mark = ids, batch, fast, {}, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, '__name__', '') in _QUERIES: return func(*args, **kwargs)
        on_map = False
        for a in (*args, *kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):
                if id(t) in self.ids:
                    if id(t) not in self.seen: self.seen[id(t)] = len(self.seen)
                elif isinstance(t, torch.Tensor) and not on_map: on_map = _is_map(t, self.batch)
        if on_map: self.mark = len(self.seen)
        out = shortcut(func, args, kwargs) if self.fast else None
        return func(*args, **kwargs) if out is None else out


def _first_tensor(x):
    if isinstance(x, torch.Tensor): return x
    if isinstance(x, (list, tuple)): return next((t for t in x if isinstance(t, torch.Tensor)), None)
    return None


class _Links:
    "Each norm linked to the layer whose output it is the first to take; each layer's output size on a map"
    def __init__(self, batch: int):
        self.outs, self.norm_of, self.size, self.batch = {}, {}, {}, batch

    @staticmethod
    def kinds(model: nn.Module) -> dict[nn.Module, tuple[str, bool]]:
        "The modules to watch: each conv/linear layer and norm, with its name and whether it is a norm"
        return {m: (n, is_norm(m)) for n, m in model.named_modules() if is_layer(m) or is_norm(m)}

    def before(self, name: str, norm: bool, args) -> None:
        t = _first_tensor(args)
        if t is None or id(t) not in self.outs: return
        layer, _ = self.outs[id(t)]
        if norm and layer is not None: self.norm_of.setdefault(name, layer)
        # a norm (or layer) that takes the same tensor later does not normalise that layer's output alone
        self.outs[id(t)] = (None, t)

    def after(self, name: str, m: nn.Module, args, out) -> None:
        t, x = _first_tensor(out), _first_tensor(args)
        if t is None: return
        self.outs.setdefault(id(t), (name, t))  # the tensor is kept, so its id is not reused during the pass
        if name in self.size or x is None or not _is_map(x, self.batch) or t.ndim < 3: return
        if not isinstance(m, nn.modules.conv._ConvNd):
            self.size[name] = tuple(t.shape[1:-1])  # positions: tokens, or pixels of a channels-last map
        elif len(m.kernel_size) == 2: self.size[name] = tuple(t.shape[2:])

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
    "Forward pre/post hooks on every module: the running-module stack, each module's `Call`, the norm links"
    def __init__(self, model: nn.Module, links: _Links | None):
        self.stack, self.calls, self.links = [model], {}, links
        self.watch = _Links.kinds(model) if links else {}

    def pre(self, m, args, kwargs):
        self.stack.append(m)
        c = self.calls.setdefault(m, Call())
        if not c.calls: c.inputs = _shapes((args, kwargs))
        if m in self.watch: self.links.before(*self.watch[m], args)

    def post(self, m, args, kwargs, out):
        self.stack.pop()
        c = self.calls[m]
        if not c.calls: c.outputs = _shapes(out)
        c.calls += 1
        if m in self.watch and not self.watch[m][1]: self.links.after(self.watch[m][0], m, args, out)

    def attach(self, model: nn.Module, stack: ExitStack) -> None:
        for m in model.modules():
            stack.callback(m.register_forward_pre_hook(self.pre, with_kwargs=True).remove)
            stack.callback(m.register_forward_hook(self.post, with_kwargs=True).remove)


def record(model: nn.Module, inputs: tuple[tuple, dict], count: bool = True, structure: bool = False,
           order: bool = False, fast: bool = False) -> Recording:
    """Run `model` once (eval mode, no grad) on `inputs` (args, kwargs) where its tensors are, recording
    mult-adds per module (`count`; with depth and weight ops: `structure`) and the `Trace` (`order`; `fast`:
    shape shortcuts on meta). Hooks are always removed and modes restored; an error names the module"""
    args, kwargs = inputs
    batch, named = batch_of(inputs), {id(p): n for n, p in model.named_parameters()}
    hooks = _Hooks(model, _Links(batch) if order else None)
    counter = _OpCounter(hooks.stack, set(named) if structure else None) if count or structure else None
    first = _FirstUse(set(named), batch, fast) if order else None
    device = str(next((t.device for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)), 'cpu'))
    with ExitStack() as stack:
        hooks.attach(model, stack)
        for ctx in (eval_mode(model), torch.no_grad(), _no_fast_paths(), first, counter,
                    _quiet() if order else None):
            if ctx is not None: stack.enter_context(ctx)
        try: out = model(*args, **kwargs)
        except Exception as e: raise _forward_error(e, model, hooks.stack[-1], device) from e
    tr = None
    if order:
        ranked = [named[i] for i in sorted(first.seen, key=first.seen.get)]
        tr = Trace(ranked, first.mark, _adjacent(hooks.links.norm_of, ranked), hooks.links.size)
    macs, depth, ops = ((dict(counter.macs), counter.longest(out), counter.weight_ops) if counter
                        else ({}, 0, 0))
    return Recording(model, device, _shapes(inputs), _shapes(out), hooks.calls, macs, depth, ops, tr)


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


def _adjacent(norm_of: dict[str, str], order: list[str]) -> dict[str, str]:
    "The links where the norm is the next layer with parameters to run after its layer (nothing in between)"
    at = {}
    for i, n in enumerate(order): at.setdefault(n.rpartition('.')[0], []).append(i)
    return {nm: ly for nm, ly in norm_of.items() if nm in at and ly in at and min(at[nm]) == max(at[ly]) + 1}


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


def run(arch, input_size=None, input_data=None, device='meta', dtype=torch.float32,
        kwargs: dict | None = None, structure: bool = False, order: bool = False) -> Recording:
    """One counted pass of `arch` on `device` (input: `input_data`, else `input_size`, else the size the arch
    is made for); on meta, falls back to the CPU when the model needs real data"""
    dev, dtype, kwargs = check_device(device), check_dtype(dtype), kwargs or {}
    if input_size is not None and input_data is None: check_size(input_size)
    model = model_on(arch, dev, kwargs)
    given = input_size is not None or input_data is not None
    first = None
    for size in [input_size] if given else input_sizes(model, arch, kwargs):  # the first size that runs
        try: return record(model, example_inputs(size, input_data, dev, dtype), structure=structure,
                           order=order)
        except ForwardError as e:
            if dev.type == 'meta' and _meta_only(e.__cause__):
                first = e
                break
            first = first or e
    else: raise _size_hint(first, model, arch, input_size, input_data)
    warnings.warn(f"{arch_name(arch)} cannot run on the meta device ({first}); "
                  "ran on the CPU with real weights", stacklevel=3)
    cpu, model = torch.device('cpu'), cpu_model(arch, kwargs)
    try: return record(model, example_inputs(size, input_data, cpu, dtype), structure=structure, order=order)
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
    # the shortcuts are exact on the ops they take; if every size fails, retry without them
    for fast in (True, False):
        for size in ([None] if input_data is not None else sizes):
            try: return record(m, example_inputs(size, input_data, meta, batch=2), False, order=True,
                               fast=fast).trace
            except ForwardError: continue
    return None


def first_use_order(model: nn.Module, input_size=None, input_data=None) -> list[str]:
    "Dotted names of the parameters of `model` in the order an eval forward pass first uses them"
    # the pass runs where `model` is
    model = unwrap(resolve(model))
    dev = next(iter(model.parameters()), torch.empty(0, device='meta')).device
    sizes = input_sizes(model) if input_size is None and input_data is None else [input_size]
    for i, size in enumerate(sizes):  # the first size that runs
        try: return record(model, example_inputs(size, input_data, dev), False, order=True).trace.order
        except ForwardError:
            if i == len(sizes) - 1: raise
