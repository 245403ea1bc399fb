"Layer summaries (seed 001) and architecture comparisons (seeds 000, 001) from one forward pass on the meta device."
from __future__ import annotations

__all__ = ['CONVENTION', 'DEPTH_RULE', 'LAYERS_RULE', 'Column', 'ForwardError', 'LayerRow', 'LayerSummary',
           'layer_summary', 'ArchRecord', 'Comparison', 'compare_archs']

import copy, enum, functools, math, warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import flop_registry
from torch.utils.weak import WeakTensorKeyDictionary

from .render import Report, fmt_int, fmt_shape, html_table
from .archs import arch_name, native_input_size, resolve
from .tree import copy_to, eval_mode, num_params, unwrap, walk

CONVENTION = ('mult-adds: one per multiply-accumulate of conv, linear, matmul and attention '
              '(torch.utils.flop_counter FLOPs / 2), plus one per bias element added by a conv or linear')
DEPTH_RULE = 'depth: most mult-add ops (conv, linear, matmul, attention) on one path from input to output'
LAYERS_RULE = 'weight layers: conv/linear ops run with a weight of the model (each call; functional ones included)'

aten = torch.ops.aten
_BIAS_ARG = {aten.convolution: 2, aten._convolution: 2, aten.addmm: 0}  # op -> position of its bias argument
# device kernels of attention that flop_registry lacks, counted by its formula for the same attention on CUDA
_SDPA = flop_registry[aten._scaled_dot_product_flash_attention]
_EXTRA = {getattr(aten, n): _SDPA for n in ('_scaled_dot_product_flash_attention_for_cpu',
                                            '_scaled_dot_product_fused_attention_overrideable',
                                            '_scaled_dot_product_attention_math_for_mps') if hasattr(aten, n)}


def _formula(func):
    "flop_counter's FLOP formula for `func`, or ours for the device kernels it lacks; None when uncounted"
    pkt = func._overloadpacket
    return flop_registry.get(pkt) or _EXTRA.get(pkt)


@contextmanager
def _no_fast_paths():
    "MultiheadAttention and TransformerEncoder without their fused fast path (one op hiding its matmuls)"
    mha = getattr(torch.backends, 'mha', None)
    old = mha.get_fastpath_enabled() if mha else None
    if mha: mha.set_fastpath_enabled(False)
    try: yield
    finally:
        if mha: mha.set_fastpath_enabled(old)


class ForwardError(RuntimeError):
    "The forward pass of a summary failed; `module` is the dotted name of the innermost module that was running"
    def __init__(self, msg: str, module: str, device: str):
        super().__init__(msg)
        self.module, self.device = module, device


class Column(str, enum.Enum):
    "The columns a `LayerSummary` can show (torchinfo's `col_names`)"
    KERNEL = 'kernel_size'
    INPUT = 'input_size'
    OUTPUT = 'output_size'
    PARAMS = 'num_params'
    TRAINABLE = 'trainable'
    MACS = 'mult_adds'


HEADERS = {Column.KERNEL: 'Kernel Shape', Column.INPUT: 'Input Shape', Column.OUTPUT: 'Output Shape',
           Column.PARAMS: 'Param #', Column.TRAINABLE: 'Trainable #', Column.MACS: 'Mult-Adds'}
SEED_COLUMNS = ('kernel_size', 'output_size', 'num_params', 'mult_adds')


# ---------------------------------------------------------------- collect: one forward pass

class _OpCounter(TorchDispatchMode):
    """Adds each op's mult-adds to the innermost running module (`stack[-1]`); given the model's parameter ids
    `params`, also tracks the longest chain of counted ops and the number of counted ops that use a weight"""
    _whole: set = set()  # ops without a formula whose decomposition (if any) holds no counted op: run them whole

    def __init__(self, stack: list, params: set | None = None):
        super().__init__()
        self.stack, self.macs, self.counted, self.params, self.weight_ops = stack, defaultdict(int), 0, params, 0
        self.depth = WeakTensorKeyDictionary() if params is not None else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        formula = _formula(func)
        if formula is None and func not in self._whole:  # as FlopCounterMode: count what a composite op decomposes to
            before = self.counted
            with self: out = func.decompose(*args, **kwargs)
            if out is NotImplemented or self.counted == before: self._whole.add(func)  # e.g. batch norm: 3 ms saved
            if out is not NotImplemented: return out
        out = func(*args, **kwargs)
        if formula is not None:
            self.macs[self.stack[-1]] += _macs(formula, func, out, args, kwargs)
            self.counted += 1
        if self.depth is not None: self._track(formula is not None, out, (args, kwargs))
        return out

    def _uses_weight(self, args) -> bool:
        return any(isinstance(a, torch.Tensor) and (id(a) in self.params or id(a._base) in self.params) for a in args)

    def _track(self, counted: bool, out, ins):
        if counted and self._uses_weight(ins[0]): self.weight_ops += 1
        d = max((self.depth.get(t, 0) for t in tree_leaves(ins) if isinstance(t, torch.Tensor)), default=0) + counted
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


@dataclass
class _Trace:
    "What the forward pass saw of one module: number of calls, input and output shapes of the first call"
    calls: int = 0
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


def _shapes(x) -> list[list[int]]:
    "Shapes of every tensor in the (nested) structure `x`"
    return [list(t.shape) for t in tree_leaves(x) if isinstance(t, torch.Tensor)]


@contextmanager
def _hooked(model: nn.Module, stack: list, traces: dict):
    "Forward pre/post hooks on every module of `model` keeping the running-module `stack` and `traces`; always removed"
    def pre(m, args, kwargs):
        stack.append(m)
        t = traces.setdefault(m, _Trace())
        if not t.calls: t.inputs = _shapes((args, kwargs))

    def post(m, args, kwargs, out):
        stack.pop()
        t = traces[m]
        if not t.calls: t.outputs = _shapes(out)
        t.calls += 1

    handles = []
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
        yield
    finally:
        for h in handles: h.remove()


@dataclass
class _Pass:
    "The outcome of one counted forward pass"
    model: nn.Module
    device: str
    traces: dict
    macs: dict
    inputs: list
    outputs: list
    depth: int = 0
    weight_ops: int = 0


def _forward(model: nn.Module, inputs: tuple, device: torch.device, structure: bool = False) -> _Pass:
    """Run `model` once on `inputs` (args, kwargs), counting mult-adds per module (and depth, weight layers when
    `structure`); errors name the failing module"""
    args, kwargs = inputs
    stack, traces = [model], {}
    counter = _OpCounter(stack, {id(q) for q in model.parameters()} if structure else None)
    try:
        with eval_mode(model), _hooked(model, stack, traces), torch.no_grad(), _no_fast_paths(), counter:
            out = model(*args, **kwargs)
    except Exception as e:
        raise _forward_error(e, model, stack[-1], device) from e
    return _Pass(model, str(device), traces, dict(counter.macs), _shapes(inputs), _shapes(out), counter.longest(out),
                 counter.weight_ops)


def _forward_error(e: Exception, model: nn.Module, where: nn.Module, device) -> ForwardError:
    name = next((n for n, m in model.named_modules() if m is where), '')
    at = f"module '{name}' ({type(where).__name__})" if name else f'the root module ({type(where).__name__})'
    why = str(e).splitlines()[0] if str(e).strip() else '(no message: an assert on the input, its size maybe)'
    msg = f"forward pass on {device} failed in {at}: {type(e).__name__}: {why}"
    return ForwardError(msg, name, str(device))


# ---------------------------------------------------------------- collect: model, device, inputs

def _check_device(device) -> torch.device:
    "`device` as a `torch.device` that this machine has; else a `ValueError` naming the valid ones"
    try: dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be a torch device such as 'meta', 'cpu' or 'cuda:0'; got {device!r}") from e
    backend = getattr(torch, dev.type, None) if dev.type not in ('cpu', 'meta') else None
    if backend is not None and hasattr(backend, 'is_available') and not backend.is_available():
        raise ValueError(f"device {str(dev)!r} is not available on this machine; use 'meta' (no weights) "
                         f"or 'cpu'")
    return dev


def _check_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point: return dtype
    raise TypeError(f"dtype must be a floating torch dtype such as torch.float32 or torch.bfloat16; "
                    f"got {dtype!r}")


def _is_shape(s) -> bool:
    return (isinstance(s, (tuple, list, torch.Size)) and len(s) > 0
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in s))


def _check_size(size) -> list[tuple[int, ...]]:
    "`size` as a list of shapes: one shape of positive ints, or a list of shapes for several inputs"
    if _is_shape(size): return [tuple(size)]
    if isinstance(size, (list, tuple)) and size and all(_is_shape(s) for s in size): return [tuple(s) for s in size]
    raise TypeError(f"input_size must be a shape of positive ints such as (1, 3, 224, 224), or a list of shapes "
                    f"for a model with several inputs; got {size!r}")


def _move(x, device: torch.device):
    "Tensor `x` on `device` (a meta tensor becomes random/zero data of its shape); anything else as is"
    if not isinstance(x, torch.Tensor) or x.device == device: return x
    if x.is_meta and device.type != 'meta':
        if x.is_floating_point(): return torch.randn(x.shape, dtype=x.dtype, device=device)
        return torch.zeros_like(x, device=device)
    return x.to(device)


def _inputs(input_size, input_data, dtype, device: torch.device) -> tuple[tuple, dict]:
    "Positional and keyword inputs for the forward pass: `input_data` moved to `device`, or random `input_size` tensors"
    if input_data is None:
        return tuple(torch.randn(s, dtype=dtype, device=device) for s in _check_size(input_size)), {}
    data = tree_map(functools.partial(_move, device=device), input_data)
    if isinstance(data, dict): return (), data
    return (tuple(data) if isinstance(data, (list, tuple)) else (data,)), {}


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _is_on(model: nn.Module, device: torch.device) -> bool:
    "True when every tensor of `model` is on `device` (a module without tensors is anywhere)"
    return all(t.device.type == device.type and device.index in (None, t.device.index) for t in _tensors(model))


def _prepare(arch, device: torch.device, kwargs: dict) -> nn.Module:
    "`arch` as a module on `device`: a given module is used where it is on `device`, else copied (never changed)"
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


def _cpu_model(arch, kwargs: dict) -> nn.Module:
    "`arch` with real weights on the CPU, for models whose forward pass cannot run on meta"
    cpu = torch.device('cpu')
    if not isinstance(arch, nn.Module): return unwrap(resolve(arch, device=cpu, **kwargs))
    model = unwrap(arch)
    if any(t.is_meta for t in _tensors(model)): return _materialize(model)
    return model if _is_on(model, cpu) else copy_to(model, cpu)


def _meta_only(e: BaseException | None) -> bool:
    "True when error `e` comes from the meta device (data-dependent ops), so a CPU pass may succeed"
    msg = str(e).lower()
    return isinstance(e, NotImplementedError) or any(s in msg for s in ('meta', 'data-dependent', 'data dependent'))


def _run(arch, input_size, input_data, device, dtype, kwargs: dict, structure: bool = False) -> _Pass:
    """One counted forward pass of `arch` on `device` (input: `input_data`, else `input_size`, else the
    model's native size); on meta, falls back to the CPU when the model needs real data"""
    dev, dtype = _check_device(device), _check_dtype(dtype)
    if input_size is not None and input_data is None: _check_size(input_size)
    model = _prepare(arch, dev, kwargs)
    size = _input_size(model, arch, input_size, kwargs)
    try: return _forward(model, _inputs(size, input_data, dtype, dev), dev, structure)
    except ForwardError as e:
        if dev.type != 'meta' or not _meta_only(e.__cause__):
            raise _size_hint(e, model, arch, input_size, input_data)
        warnings.warn(f"{arch_name(arch)} cannot run on the meta device ({e}); ran on the CPU with real weights",
                      stacklevel=3)
    cpu = torch.device('cpu')
    return _forward(_cpu_model(arch, kwargs), _inputs(size, input_data, dtype, cpu), cpu, structure)


def _input_size(model: nn.Module, arch, input_size, kwargs: dict):
    "`input_size` if given, else the size `model` is made for (`native_input_size`), else (1, 3, 224, 224)"
    if input_size is not None: return input_size
    side = next((kwargs[k] for k in ('img_size', 'image_size') if k in kwargs), None)  # the builder's size
    if isinstance(side, int): return (1, 3, side, side)
    return native_input_size(model, arch) or (1, 3, 224, 224)


def _size_hint(e: ForwardError, model: nn.Module, arch, input_size, input_data) -> ForwardError:
    "`e`, its message ending with the size the model is made for when the size the user gave may be the cause"
    native = native_input_size(model, arch)
    if input_data is not None or input_size is None or native is None or tuple(input_size) == native: return e
    e.args = (f"{e.args[0]} (the input was {list(input_size)}; {arch_name(arch)} is made for "
              f"{list(native)})",)
    return e


# ---------------------------------------------------------------- compute: rows without double counting

@dataclass
class LayerRow:
    "One module in a `layer_summary`: `params`, `trainable`, `macs` as shown (no double counting); `total_*`: subtree"
    name: str                       # dotted name, '' for the root
    path: tuple[int, ...]           # index path from the root
    cls: str
    kernel: tuple[int, ...] | int | None
    input_shapes: list[list[int]]   # every input tensor, first call ([] when never called)
    output_shapes: list[list[int]]  # every output tensor, first call
    params: int                     # expanded rows: own parameters; collapsed rows and leaves: their subtree's
    trainable: int
    macs: int                       # expanded rows: own ops; collapsed rows and leaves: their subtree's
    total_params: int
    total_macs: int
    expanded: bool                  # its children have rows of their own
    calls: int

    @property
    def depth(self) -> int: return len(self.path)

    @property
    def var_name(self) -> str: return self.name.rpartition('.')[2] or self.cls


def _kernel(m: nn.Module) -> tuple[int, ...] | int | None:
    k = getattr(m, 'kernel_size', None)
    if isinstance(k, int) and not isinstance(k, bool): return k
    if isinstance(k, (tuple, list)) and all(isinstance(i, int) for i in k): return tuple(k)
    return None


def _count_new(items, seen: set, size) -> tuple[int, int]:
    "Sum `size` over `items` not in `seen` (by id), and over those that are trainable; marks them seen"
    total = trainable = 0
    for x in items:
        if id(x) in seen: continue
        seen.add(id(x))
        n = size(x)
        total += n
        trainable += n if getattr(x, 'requires_grad', False) else 0
    return total, trainable


def _rows(p: _Pass, depth: int | None) -> list[LayerRow]:
    "One `LayerRow` per module down to `depth`; each parameter and each module's ops shown in exactly one row"
    seen_p, seen_m, rows = set(), set(), []
    for node in walk(p.model, depth):
        m, tr, sub = node.module, p.traces.get(node.module, _Trace()), list(node.module.modules())
        expanded = (depth is None or node.depth < depth) and len(sub) > 1
        params, trainable = _count_new(m.parameters(recurse=not expanded), seen_p, lambda q: q.numel())
        macs, _ = _count_new([m] if expanded else sub, seen_m, lambda x: p.macs.get(x, 0))
        rows.append(LayerRow(node.name, node.path, type(m).__name__, _kernel(m), tr.inputs, tr.outputs, params,
                             trainable, macs, num_params(m), sum(p.macs.get(x, 0) for x in sub), expanded, tr.calls))
    return rows


# ---------------------------------------------------------------- render

def _fmt_kernel(k) -> str:
    if k is None: return '--'
    return str(list(k)) if isinstance(k, tuple) else str(k)


def _fmt_shapes(shapes: list) -> str:
    if not shapes: return '--'
    return fmt_shape(shapes[0] if len(shapes) == 1 else shapes)


def _cell(r: LayerRow, c: Column) -> str:
    "The text of column `c` in row `r`"
    if c is Column.KERNEL: return _fmt_kernel(r.kernel)
    if c is Column.INPUT: return _fmt_shapes(r.input_shapes)
    if c is Column.OUTPUT: return _fmt_shapes(r.output_shapes)
    if c is Column.PARAMS: return fmt_int(r.params)
    if c is Column.TRAINABLE: return fmt_int(r.trainable)
    return fmt_int(r.macs)


def _prefix(depth: int) -> str:
    "torchinfo's tree prefix for a row at `depth`"
    if depth == 0: return ''
    return '├─' if depth == 1 else '│    ' * (depth - 1) + '└─'


def _title(r: LayerRow) -> str: return f'{r.cls} ({r.var_name})'


def _name_width(rows: list[LayerRow]) -> int:
    "torchinfo's layer-name column width: 40, or the longest name rounded up to a multiple of 5"
    longest = max((len(_title(r)) + r.depth * 5 + 1 for r in rows), default=0)
    return 40 if longest < 40 else math.ceil(longest / 5) * 5


def _line(first: str, cells: Sequence[str], width: int, widths: Sequence[int]) -> str:
    return (f'{first:<{width}} ' + ''.join(f'{c:<{w}} ' for c, w in zip(cells, widths))).rstrip()


def _col_widths(table: list[list[str]], col_width: int | None) -> list[int]:
    "Column widths: `col_width` for all (torchinfo's; long cells overflow), or None: 14 or the longest cell"
    if col_width is not None: return [col_width] * len(table[0])
    return [max([14] + [len(r[i]) for r in table]) for i in range(len(table[0]))]


def _units(macs: int) -> tuple[str, float]:
    "torchinfo's unit for total mult-adds: M, G or T"
    for unit, scale in (('T', 1e12), ('G', 1e9)):
        if macs >= scale: return unit, macs / scale
    return 'M', macs / 1e6


class LayerSummary(Report):
    "Per-layer kernel shape, shapes, parameters and mult-adds of one forward pass (seed 001); `.rows` are `LayerRow`s"
    def __init__(self, rows: list[LayerRow], total_params: int, trainable_params: int, total_mult_adds: int,
                 device: str, input_shapes: list, output_shapes: list, columns: Sequence[Column],
                 title: str = '', col_width: int | None = None):
        self.rows, self.total_params, self.trainable_params = rows, total_params, trainable_params
        self.total_mult_adds, self.device, self.columns, self.title = total_mult_adds, device, list(columns), title
        self.input_shapes, self.output_shapes, self.col_width = input_shapes, output_shapes, col_width

    @property
    def non_trainable_params(self) -> int: return self.total_params - self.trainable_params

    def to_text(self) -> str:
        w = _name_width(self.rows)
        table = [[HEADERS[c] for c in self.columns]]
        table += [[_cell(r, c) for c in self.columns] for r in self.rows]
        ws = _col_widths(table, self.col_width)
        names = ['Layer (type (var_name))'] + [_prefix(r.depth) + _title(r) for r in self.rows]
        return '\n'.join([*(_line(n, cells, w, ws) for n, cells in zip(names, table)), *self._footer()])

    def _footer(self) -> list[str]:
        unit, val = _units(self.total_mult_adds)
        return [f'Total params: {self.total_params:,}', f'Trainable params: {self.trainable_params:,}',
                f'Non-trainable params: {self.non_trainable_params:,}', f'Total mult-adds ({unit}): {val:.2f}',
                f'Convention: {CONVENTION}',
                f'Forward pass on: {self.device} (input {_fmt_shapes(self.input_shapes)}, '
                f'output {_fmt_shapes(self.output_shapes)})']

    def to_df(self):
        import pandas as pd
        cols = ['name', 'path', 'depth', 'class', 'kernel_size', 'input_shape', 'output_shape', 'params',
                'trainable_params', 'mult_adds', 'total_params', 'total_mult_adds', 'expanded', 'calls']
        return pd.DataFrame([(r.name, list(r.path), r.depth, r.cls, _fmt_kernel(r.kernel), _fmt_shapes(r.input_shapes),
                              _fmt_shapes(r.output_shapes), r.params, r.trainable, r.macs, r.total_params,
                              r.total_macs, r.expanded, r.calls) for r in self.rows], columns=cols)

    def _repr_html_(self) -> str:
        heads = ['Layer (type (var_name))', *(HEADERS[c] for c in self.columns)]
        rows = [[_title(r), *(_cell(r, c) for c in self.columns)] for r in self.rows]
        foot = '<br>'.join(self._footer())
        return html_table(heads, rows, self.title, [r.depth for r in self.rows]) + f'<pre>{foot}</pre>'


# ---------------------------------------------------------------- public entry points

def _check_depth(depth) -> int | None:
    if depth is None or (isinstance(depth, int) and not isinstance(depth, bool) and depth >= 0): return depth
    raise ValueError(f"depth must be an int >= 0 (0 shows the root only) or None for every level; got {depth!r}")


def _columns(col_names) -> list[Column]:
    names = [col_names] if isinstance(col_names, str) else list(col_names)
    try: return [Column(c) for c in names]
    except ValueError:
        raise ValueError(f"col_names must be names from {[c.value for c in Column]}; got {col_names!r}") from None


def layer_summary(arch, input_size=None, depth: int | None = 3, device='meta', input_data=None,
                  col_names: Sequence[str] = SEED_COLUMNS, dtype: torch.dtype = torch.float32,
                  col_width: int | None = None, **kwargs) -> LayerSummary:
    """Kernel shape, input/output shapes, parameters and mult-adds of every module of `arch` down to `depth`.

    Args:
        arch: a module (never changed: copied to `device` unless already there), a builder, or a registry name
            such as `'convnext_base'`. The pass runs in eval mode, under `no_grad`; train/eval flags are restored.
        input_size: the input shape, or a list of shapes for several inputs; ignored when `input_data` is given.
            None: the size the model is made for (timm's `pretrained_cfg`, torchvision's weights), else
            1x3x224x224.
        depth: levels of modules shown; deeper modules are folded into their ancestor's row. None: every level.
        device: where the pass runs; `'meta'` needs no weights. A model with data-dependent ops falls back to the CPU.
        input_data: a tensor, a list/tuple of positional inputs, or a dict of keyword inputs (non-image models).
        col_names: columns of the text table, from `Column` (seed 001's by default).
        col_width: width of every text column, long cells overflowing (torchinfo's; seed 001 used 14); None:
            each column as wide as its longest cell, at least 14.
        kwargs: passed to the builder (`num_classes`, ...).
    """
    depth, cols, col_width = _check_depth(depth), _columns(col_names), _check_width(col_width)
    p = _run(arch, input_size, input_data, device, dtype, kwargs)
    rows = _rows(p, depth)
    return LayerSummary(rows, num_params(p.model), num_params(p.model, True), sum(p.macs.values()), p.device,
                        p.inputs, p.outputs, cols, arch_name(arch), col_width)


def _check_width(w) -> int | None:
    if w is None or (isinstance(w, int) and not isinstance(w, bool) and w > 0): return w
    raise ValueError(f"col_width must be a positive int (seed 001 used 14) or None to fit each column; "
                     f"got {w!r}")


@dataclass
class ArchRecord:
    "One arch in a `compare_archs` table"
    name: str
    params: int
    trainable: int
    macs: int
    depth: int                  # see DEPTH_RULE
    weight_layers: int          # see LAYERS_RULE
    output_shapes: list[list[int]]
    stage_params: list[int]     # parameters per stage, stem first
    stages_by: str              # 'split_stages' or 'children' (the fallback)
    device: str
    input_shapes: list[list[int]] = field(default_factory=list)  # the input (by default the arch's own size)


def _rel(x: int, base: int) -> float | None:
    return (x - base) / base if base else None


def _pct(v: float | None) -> str: return '--' if v is None else f'{v:+.2%}'


class Comparison(Report):
    "Several archs side by side: parameters, mult-adds, depth, output shape, stage sizes, change against the first"
    def __init__(self, records: list[ArchRecord], title: str = ''):
        self.records, self.title = records, title

    def _cells(self) -> list[list]:
        b = self.records[0]
        return [[r.name, r.params, _rel(r.params, b.params), r.macs, _rel(r.macs, b.macs), r.depth, r.weight_layers,
                 _fmt_shapes(r.input_shapes), _fmt_shapes(r.output_shapes), r.stage_params]
                for r in self.records]

    _COLS = ['arch', 'params', 'params_change', 'mult_adds', 'mult_adds_change', 'depth', 'weight_layers',
             'input_shape', 'output_shape', 'stage_params']

    def to_df(self):
        import pandas as pd
        return pd.DataFrame(self._cells(), columns=self._COLS)

    def _text_df(self):
        import pandas as pd
        stages = lambda s: ' / '.join(f'{n:,}' for n in s)
        fmt = [str, fmt_int, _pct, fmt_int, _pct, str, str, str, str, stages]
        rows = [[f(v) for f, v in zip(fmt, r)] for r in self._cells()]
        return pd.DataFrame(rows, columns=['Arch', 'Params', 'Δ params', 'Mult-adds', 'Δ mult-adds', 'Depth',
                                           'Weight layers', 'Input shape', 'Output shape',
                                           'Params per stage'])

    def to_text(self) -> str:
        devices = sorted({r.device for r in self.records})
        by = sorted({r.stages_by for r in self.records})
        notes = [f'Δ: change against {self.records[0].name}', DEPTH_RULE.capitalize(),
                 LAYERS_RULE.capitalize(), f'Params per stage: from {" / ".join(by)}',
                 f'Convention: {CONVENTION}', f'Forward pass on: {", ".join(devices)}']
        return self._text_df().to_string(index=False) + '\n' + '\n'.join(notes)

    def _repr_html_(self) -> str:
        df = self._text_df()
        return html_table(list(df.columns), df.values.tolist(), self.title)


def _stage_params(model: nn.Module) -> tuple[list[int], str]:
    "Parameters per stage from `split.split_stages`, or per top-level child (root-held ones first) if it fails"
    try:
        from .split import split_stages
        return [sum(q.numel() for q in g) for g in split_stages(model)], 'split_stages'
    except Exception:
        seen = set()
        groups = [list(model.parameters(recurse=False))] + [list(c.parameters()) for c in model.children()]
        sizes = [_count_new(g, seen, lambda q: q.numel())[0] for g in groups]
        return [n for n in sizes if n], 'children'


def _label(arch) -> str:
    return arch_name(arch.func) if isinstance(arch, functools.partial) else arch_name(arch)


def _named(archs) -> list[tuple[str, object]]:
    "`archs` (a list or a dict name -> arch) as (unique name, arch) pairs"
    if isinstance(archs, dict) and archs: return [(str(k), a) for k, a in archs.items()]
    if isinstance(archs, (str, nn.Module)) or not isinstance(archs, (list, tuple)) or not archs:
        raise TypeError(f"archs must be a non-empty list of archs or a dict of name -> arch; got {archs!r:.80}")
    names, out = defaultdict(int), []
    for a in archs:
        n = _label(a)
        names[n] += 1
        out.append((n if names[n] == 1 else f'{n} ({names[n]})', a))
    return out


def _record(name: str, arch, input_size, device, input_data, dtype) -> ArchRecord:
    p = _run(arch, input_size, input_data, device, dtype, {}, structure=True)
    stages, by = _stage_params(p.model)
    return ArchRecord(name, num_params(p.model), num_params(p.model, True), sum(p.macs.values()), p.depth, p.weight_ops,
                      p.outputs, stages, by, p.device, p.inputs)


def compare_archs(archs, input_size=None, device='meta', input_data=None,
                  dtype: torch.dtype = torch.float32) -> Comparison:
    """One row per arch: parameters, mult-adds, depth, weight layers, output shape, parameters per stage, and the
    change of parameters and mult-adds against the first arch.

    Args:
        archs: a list of archs (modules, builders, names) or a dict of name -> arch.
        input_size: the input shape given to every arch (or a list of shapes); ignored when `input_data` is given.
            None: each arch gets the size it is made for (as in `layer_summary`); the table shows each input.
        device: where the passes run (`'meta'`: no weights).
        input_data: inputs given to every arch instead of random ones.
    """
    named = _named(archs)
    return Comparison([_record(n, a, input_size, device, input_data, dtype) for n, a in named],
                      ', '.join(n for n, _ in named))
