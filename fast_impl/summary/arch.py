"Instant introspection without weights: `arch_summary` (seed 004) and `count_parameters` (seed 000)."
from __future__ import annotations

__all__ = ['ArchRow', 'ArchSummary', 'arch_summary', 'ParamTable', 'param_table', 'count_parameters']

from dataclasses import dataclass, field

from torch import nn

from ..render import Report, pretty_table
from ..archs import arch_name, resolve
from ..tree import Path, find_module, n_layers, num_params, unwrap


@dataclass
class ArchRow:
    "One child in an `arch_summary`: position, name, class, seed-004 layer count, parameters and index path"
    idx: int
    name: str
    cls: str
    layers: int
    params: int
    trainable: int
    path: tuple[int, ...]
    children: list[str] = field(default_factory=list)


def _row(i: int, name: str, m: nn.Module, base: tuple) -> ArchRow:
    return ArchRow(i, name, type(m).__name__, n_layers(m), num_params(m), num_params(m, True), base + (i,),
                   [type(c).__name__ for c in m.children()])


class ArchSummary(Report):
    "The children of one module: `str()` is seed 004's text, `to_df()` a DataFrame"
    # the DataFrame gives each row's index path
    def __init__(self, rows: list[ArchRow], verbose: bool = False, title: str = ''):
        self.rows, self.verbose, self.title = rows, verbose, title

    @property
    def named(self) -> bool:
        "True when the children have names that are not just their indices (the `(name)` column shows)"
        return any(r.name != str(r.idx) for r in self.rows)

    def to_text(self) -> str:
        w = max((len(r.name) for r in self.rows), default=0) + 3  # '(name)' and one space
        lines = []
        for r in self.rows:
            name = f'({r.name})'.ljust(w) + ' ' if self.named else ''
            lines.append(f'[{r.idx:<2}] {name}{r.cls:<17}: {r.layers:<3} layers')
            if self.verbose: lines += [f'      {c}' for c in r.children]
        return '\n'.join(lines)

    def to_df(self):
        import pandas as pd
        cols = ['index', 'name', 'class', 'layers', 'params', 'trainable_params', 'path', 'children']
        return pd.DataFrame([(r.idx, r.name, r.cls, r.layers, r.params, r.trainable, list(r.path), r.children)
                             for r in self.rows], columns=cols)


def arch_summary(arch, path: Path = None, verbose: bool = False, **kwargs) -> ArchSummary:
    """Summarise the children of `arch` (or of its module at `path`), one line each, as in seed 004.

    Args:
        arch: a module, a builder (built on the meta device, no weights) or a registry name.
        path: an int, a list of ints, a dotted name or a mix (negative indices allowed).
        verbose: list each child's own children's class names beneath it.
        kwargs: passed to the builder.
    """
    model = unwrap(resolve(arch, **kwargs))
    name, base, m = find_module(model, path)
    rows = [_row(i, n, c, base) for i, (n, c) in enumerate(m.named_children())]
    if not rows:
        rows = [ArchRow(0, name or '0', type(m).__name__, n_layers(m), num_params(m), num_params(m, True),
                        base)]
    title = f'{arch_name(arch)}' + (f' [{name}]' if name else '')
    return ArchSummary(rows, verbose, title)


class ParamTable(Report):
    "Trainable parameters by name (seed 000's table); tied tensors once, root-held tensors included"
    def __init__(self, rows: list[tuple[str, int]], title: str = ''):
        self.rows, self.title = rows, title

    @property
    def total(self) -> int: return sum(n for _, n in self.rows)

    def to_text(self) -> str:
        return pretty_table(['Modules', 'Parameters'], self.rows) + f'\nTotal Trainable Params: {self.total}'

    def to_df(self):
        import pandas as pd
        return pd.DataFrame(self.rows, columns=['name', 'params'])


def param_table(arch, **kwargs) -> ParamTable:
    "The `ParamTable` of `arch`: every trainable parameter tensor with its number of elements"
    model = unwrap(resolve(arch, **kwargs))
    rows = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    return ParamTable(rows, arch_name(arch))


def count_parameters(model, show: bool = True, **kwargs) -> int:
    "Number of trainable parameters of `model` (module, builder or name); prints seed 000's table if `show`"
    t = param_table(model, **kwargs)
    if show: print(t)
    return t.total
