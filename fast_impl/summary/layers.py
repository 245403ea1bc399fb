"`layer_summary`: per-layer kernel shape, shapes, parameters and mult-adds of one recorded pass (seed 001)."
# Collect (fast_impl.forward), compute (rows without double counting), render (text, HTML, DataFrame).
from __future__ import annotations

__all__ = ['Column', 'LayerRow', 'LayerSummary', 'layer_summary', 'count_new', 'SEED_COLUMNS']

import enum, math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..archs import arch_name
from ..forward import CONVENTION, Call, Recording, run
from ..render import Report, fmt_int, fmt_shapes, html_table
from ..tree import num_params, walk

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


# ---------------------------------------------------------------- compute: rows without double counting

@dataclass
class LayerRow:
    "One module in a `layer_summary`: `params`, `trainable`, `macs` as shown (no double counting)"
    # `total_*`: subtree
    name: str                       # dotted name, '' for the root
    path: tuple[int, ...]           # index path from the root
    cls: str
    kernel: tuple[int, ...] | int | None
    input_shapes: list[list[int]]   # every input tensor, first call ([] when never called)
    output_shapes: list[list[int]]  # every output tensor, first call
    params: int                     # expanded rows: own params; collapsed rows and leaves: their subtree's
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


def count_new(items, seen: set, size) -> tuple[int, int]:
    "Sum `size` over `items` not in `seen` (by id), and over those that are trainable; marks them seen"
    total = trainable = 0
    for x in items:
        if id(x) in seen: continue
        seen.add(id(x))
        n = size(x)
        total += n
        trainable += n if getattr(x, 'requires_grad', False) else 0
    return total, trainable


def _subtrees(model: nn.Module, macs: dict) -> dict[nn.Module, tuple[tuple, tuple]] | None:
    """Each module's (parameters, trainable, mult-adds): its own, and its subtree's summed bottom-up in one
    walk; None where a module or a parameter appears twice (shared: the rows then count one by one)"""
    out, seen = {}, set()

    def total(m: nn.Module) -> tuple[int, int, int]:
        own = list(m.parameters(recurse=False))
        if id(m) in seen or any(id(q) in seen for q in own): raise LookupError
        seen.update([id(m), *map(id, own)])
        kids = [total(c) for c in m.children()]
        mine = (sum(q.numel() for q in own), sum(q.numel() for q in own if q.requires_grad), macs.get(m, 0))
        out[m] = (mine, tuple(a + sum(k[i] for k in kids) for i, a in enumerate(mine)))
        return out[m][1]
    try: total(model)
    except LookupError: return None
    return out


def _counts(m: nn.Module, expanded: bool, p: Recording, sums, seen_p: set, seen_m: set) -> tuple[int, ...]:
    "(params, trainable, mult-adds) of `m`'s row (its own if `expanded`, else its subtree's), then its totals"
    if sums is not None:
        mine, whole = sums[m]
        return (*(mine if expanded else whole), whole[0], whole[2])
    sub = list(m.modules())
    params, trainable = count_new(m.parameters(recurse=not expanded), seen_p, lambda q: q.numel())
    macs, _ = count_new([m] if expanded else sub, seen_m, lambda x: p.macs.get(x, 0))
    return params, trainable, macs, num_params(m), sum(p.macs.get(x, 0) for x in sub)


def _rows(p: Recording, depth: int | None) -> list[LayerRow]:
    "One `LayerRow` per module down to `depth`; each parameter and each module's ops shown in exactly one row"
    seen_p, seen_m, rows, sums = set(), set(), [], _subtrees(p.model, p.macs)
    for node in walk(p.model, depth):
        m, tr = node.module, p.calls.get(node.module, Call())
        expanded = (depth is None or node.depth < depth) and any(True for _ in m.children())
        rows.append(LayerRow(node.name, node.path, type(m).__name__, _kernel(m), tr.inputs, tr.outputs,
                             *_counts(m, expanded, p, sums, seen_p, seen_m), expanded, tr.calls))
    return rows


# ---------------------------------------------------------------- render

def _fmt_kernel(k) -> str:
    if k is None: return '--'
    return str(list(k)) if isinstance(k, tuple) else str(k)


def _cell(r: LayerRow, c: Column) -> str:
    "The text of column `c` in row `r`"
    if c is Column.KERNEL: return _fmt_kernel(r.kernel)
    if c is Column.INPUT: return fmt_shapes(r.input_shapes)
    if c is Column.OUTPUT: return fmt_shapes(r.output_shapes)
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
    "Per-layer kernel shape, shapes, parameters and mult-adds of one forward pass (seed 001)"
    # `.rows` are `LayerRow`s
    def __init__(self, rows: list[LayerRow], total_params: int, trainable_params: int, total_mult_adds: int,
                 device: str, input_shapes: list, output_shapes: list, columns: Sequence[Column],
                 title: str = '', col_width: int | None = None):
        self.rows, self.total_params, self.trainable_params = rows, total_params, trainable_params
        self.total_mult_adds, self.device, self.columns = total_mult_adds, device, list(columns)
        self.title = title
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
                f'Non-trainable params: {self.non_trainable_params:,}',
                f'Total mult-adds ({unit}): {val:.2f}', f'Convention: {CONVENTION}',
                f'Forward pass on: {self.device} (input {fmt_shapes(self.input_shapes)}, '
                f'output {fmt_shapes(self.output_shapes)})']

    def to_df(self):
        import pandas as pd
        cols = ['name', 'path', 'depth', 'class', 'kernel_size', 'input_shape', 'output_shape', 'params',
                'trainable_params', 'mult_adds', 'total_params', 'total_mult_adds', 'expanded', 'calls']
        return pd.DataFrame([(r.name, list(r.path), r.depth, r.cls, _fmt_kernel(r.kernel),
                              fmt_shapes(r.input_shapes), fmt_shapes(r.output_shapes), r.params, r.trainable,
                              r.macs, r.total_params, r.total_macs, r.expanded, r.calls) for r in self.rows],
                            columns=cols)

    def _repr_html_(self) -> str:
        heads = ['Layer (type (var_name))', *(HEADERS[c] for c in self.columns)]
        rows = [[_title(r), *(_cell(r, c) for c in self.columns)] for r in self.rows]
        foot = '<br>'.join(self._footer())
        return html_table(heads, rows, self.title, [r.depth for r in self.rows]) + f'<pre>{foot}</pre>'


# ---------------------------------------------------------------- public entry points

def _check_depth(depth) -> int | None:
    if depth is None or (isinstance(depth, int) and not isinstance(depth, bool) and depth >= 0): return depth
    raise ValueError(f"depth must be an int >= 0 (0 shows the root only) or None for every level; "
                     f"got {depth!r}")


def _columns(col_names) -> list[Column]:
    names = [col_names] if isinstance(col_names, str) else list(col_names)
    try: return [Column(c) for c in names]
    except ValueError:
        raise ValueError(f"col_names must be names from {[c.value for c in Column]}; "
                         f"got {col_names!r}") from None


def layer_summary(arch, input_size=None, depth: int | None = 3, device='meta', input_data=None,
                  col_names: Sequence[str] = SEED_COLUMNS, dtype: torch.dtype = torch.float32,
                  col_width: int | None = None, **kwargs) -> LayerSummary:
    """Kernel shape, input/output shapes, parameters and mult-adds of every module of `arch` down to `depth`.

    Args:
        arch: a module (never changed: copied to `device` unless already there), a builder, or a registry
            name such as `'convnext_base'`. The pass runs in eval mode, under `no_grad`; train/eval flags
            are restored.
        input_size: the input shape, or a list of shapes for several inputs; ignored when `input_data` is
            given. None: the size the model is made for (timm's `pretrained_cfg`, torchvision's weights),
            else 1x3x224x224.
        depth: levels of modules shown; deeper modules are folded into their ancestor's row. None: every
            level.
        device: where the pass runs; `'meta'` needs no weights. A model with data-dependent ops falls back
            to the CPU.
        input_data: a tensor, a list/tuple of positional inputs, or a dict of keyword inputs (non-image
            models).
        col_names: columns of the text table, from `Column` (seed 001's by default).
        col_width: width of every text column, long cells overflowing (torchinfo's; seed 001 used 14); None:
            each column as wide as its longest cell, at least 14.
        kwargs: passed to the builder (`num_classes`, ...).
    """
    depth, cols, col_width = _check_depth(depth), _columns(col_names), _check_width(col_width)
    p = run(arch, input_size, input_data, device, dtype, kwargs)
    rows = _rows(p, depth)
    return LayerSummary(rows, num_params(p.model), num_params(p.model, True), sum(p.macs.values()), p.device,
                        p.inputs, p.outputs, cols, arch_name(arch), col_width)


def _check_width(w) -> int | None:
    if w is None or (isinstance(w, int) and not isinstance(w, bool) and w > 0): return w
    raise ValueError(f"col_width must be a positive int (seed 001 used 14) or None to fit each column; "
                     f"got {w!r}")
