"`compare_archs`: several archs side by side from one recorded pass each (seeds 000, 001)."
from __future__ import annotations

__all__ = ['DEPTH_RULE', 'LAYERS_RULE', 'ArchRecord', 'Comparison', 'compare_archs']

import functools
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from ..archs import arch_name
from ..forward import CONVENTION, run
from ..render import Report, fmt_int, fmt_shapes, html_table
from ..tree import num_params
from .layers import count_new

DEPTH_RULE = 'depth: most mult-add ops (conv, linear, matmul, attention) on one path from input to output'
LAYERS_RULE = ('weight layers: conv/linear ops run with a weight of the model '
               '(each call; functional ones included)')


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
    "Several archs side by side: parameters, mult-adds, depth, output shape, stage sizes"
    # and the change of each against the first
    def __init__(self, records: list[ArchRecord], title: str = ''):
        self.records, self.title = records, title

    def _cells(self) -> list[list]:
        b = self.records[0]
        return [[r.name, r.params, _rel(r.params, b.params), r.macs, _rel(r.macs, b.macs), r.depth,
                 r.weight_layers, fmt_shapes(r.input_shapes), fmt_shapes(r.output_shapes), r.stage_params]
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
        return pd.DataFrame(rows, columns=['Arch', 'Params', 'Δ params', 'Mult-adds', 'Δ mult-adds',
                                           'Depth', 'Weight layers', 'Input shape', 'Output shape',
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


def _stage_params(model: nn.Module, trace) -> tuple[list[int], str]:
    "Parameters per stage from `split_stages` on the recorded pass, or per top-level child if it fails"
    # per child: the root-held parameters first
    from ..split import plan, split_stages
    try: return [sum(q.numel() for q in g) for g in split_stages(plan(model, trace=trace))], 'split_stages'
    except (ValueError, TypeError, KeyError, IndexError):
        seen = set()
        groups = [list(model.parameters(recurse=False))] + [list(c.parameters()) for c in model.children()]
        sizes = [count_new(g, seen, lambda q: q.numel())[0] for g in groups]
        return [n for n in sizes if n], 'children'


def _label(arch) -> str:
    return arch_name(arch.func) if isinstance(arch, functools.partial) else arch_name(arch)


def _named(archs) -> list[tuple[str, object]]:
    "`archs` (a list or a dict name -> arch) as (unique name, arch) pairs"
    if isinstance(archs, dict) and archs: return [(str(k), a) for k, a in archs.items()]
    if isinstance(archs, (str, nn.Module)) or not isinstance(archs, (list, tuple)) or not archs:
        raise TypeError(f"archs must be a non-empty list of archs or a dict of name -> arch; "
                        f"got {archs!r:.80}")
    names, out = defaultdict(int), []
    for a in archs:
        n = _label(a)
        names[n] += 1
        out.append((n if names[n] == 1 else f'{n} ({names[n]})', a))
    return out


def _record(name: str, arch, input_size, device, input_data, dtype) -> ArchRecord:
    p = run(arch, input_size, input_data, device, dtype, structure=True, order=True)  # one pass for all
    stages, by = _stage_params(p.model, p.trace)
    return ArchRecord(name, num_params(p.model), num_params(p.model, True), sum(p.macs.values()), p.depth,
                      p.weight_ops, p.outputs, stages, by, p.device, p.inputs)


def compare_archs(archs, input_size=None, device='meta', input_data=None,
                  dtype: torch.dtype = torch.float32) -> Comparison:
    """One row per arch: parameters, mult-adds, depth, weight layers, output shape, parameters per stage.

    Each row also gives the change of parameters and mult-adds against the first arch.

    Args:
        archs: a list of archs (modules, builders, names) or a dict of name -> arch.
        input_size: the input shape given to every arch (or a list of shapes); ignored when `input_data`
            is given. None: each arch gets the size it is made for (as in `layer_summary`); the table
            shows each input.
        device: where the passes run (`'meta'`: no weights).
        input_data: inputs given to every arch instead of random ones.
    """
    named = _named(archs)
    return Comparison([_record(n, a, input_size, device, input_data, dtype) for n, a in named],
                      ', '.join(n for n, _ in named))
