"""What an architecture is, without weights.

`arch_summary`, `count_parameters`, `layer_summary`, `compare_archs`."""
# arch: the module tree (seeds 000, 004); layers: one recorded pass per arch (seed 001);
# compare: side by side.
from __future__ import annotations

from ..forward import CONVENTION, ForwardError
from .arch import ArchRow, ArchSummary, ParamTable, arch_summary, count_parameters, param_table
from .compare import ArchRecord, Comparison, compare_archs
from .layers import Column, LayerRow, LayerSummary, layer_summary

__all__ = ['arch_summary', 'count_parameters', 'param_table', 'layer_summary', 'compare_archs', 'ArchSummary',
           'ArchRow', 'ParamTable', 'LayerSummary', 'LayerRow', 'Column', 'Comparison', 'ArchRecord',
           'ForwardError', 'CONVENTION']
