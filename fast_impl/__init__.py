"fast_impl: instant architecture summaries, layer summaries and layer groups for fine-tuning vision models."
# The public API loads lazily (PEP 562): `import fast_impl` imports torch alone, never fastai, timm,
# Lightning or transformers. Everything else is importable from its subpackage and documented there.
from __future__ import annotations

__version__ = '0.1.0'

# name -> the module that defines it
_WHERE = {
    'resolve': 'archs',
    'arch_summary': 'summary', 'get_module': 'tree', 'count_parameters': 'summary',
    'layer_summary': 'summary', 'compare_archs': 'summary',
    'split_stages': 'split', 'split_blocks': 'split', 'split_n': 'split', 'split_at': 'split',
    'check_groups': 'split', 'group_table': 'split', 'splitter': 'split',
    'param_groups': 'optim', 'layer_decay': 'lr', 'GroupTracker': 'optim',
    'discriminative_learner': 'fastai.learner', 'GroupStats': 'fastai.callbacks', 'AutoRGN': 'fastai.rgn',
    'digits_dls': 'fastai.data',
}
__all__ = [*_WHERE, 'models']


def __getattr__(name: str):
    import importlib
    if name == 'models': return importlib.import_module('.models', __name__)
    if name not in _WHERE: raise AttributeError(f"module 'fast_impl' has no attribute {name!r}")
    return getattr(importlib.import_module(f'.{_WHERE[name]}', __name__), name)


def __dir__(): return sorted([*__all__, '__version__'])
