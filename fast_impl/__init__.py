"fast_impl: instant architecture summaries, layer summaries and layer groups for fine-tuning vision models with fastai."
# The public API is loaded lazily (PEP 562), so `import fast_impl` imports neither fastai nor timm.
# `fast_impl.resolve` is a module callable as its `resolve` function: `from fast_impl import resolve` works.
from __future__ import annotations

__version__ = '0.1.0'

_API = {
    'resolve': ['arch_name', 'UnknownArchError', 'WeightsUnavailableError', 'known_names', 'load_weights'],
    'tree': ['get_module', 'walk', 'unwrap', 'path_name', 'index_path'],
    'summary': ['arch_summary', 'count_parameters', 'param_table', 'ArchSummary', 'ParamTable'],
    'stats': ['layer_summary', 'compare_archs', 'LayerSummary', 'Comparison'],
    'split': ['split_stages', 'split_blocks', 'split_n', 'split_at', 'check_groups', 'group_table',
              'stage_splitter', 'block_splitter', 'n_splitter', 'at_splitter', 'splitter', 'Splitter', 'GroupError',
              'stage_blocks', 'group_names', 'first_use_order', 'order_violations'],
    'learner': ['discriminative_learner', 'GroupStats'],
    'optim': ['param_groups', 'no_decay_params', 'GroupTracker'],
    'lr': ['layer_decay'],
    'data': ['digits_dls', 'digits_images', 'cifar10_dls'],
    'models': None,
}
_WHERE = {name: mod for mod, names in _API.items() if names for name in names}
__all__ = list(_WHERE) + ['models']


def __getattr__(name: str):
    import importlib
    if name in _API: return importlib.import_module(f'.{name}', __name__)
    if name not in _WHERE: raise AttributeError(f"module 'fast_impl' has no attribute {name!r}")
    return getattr(importlib.import_module(f'.{_WHERE[name]}', __name__), name)


def __dir__(): return sorted(set(__all__) | set(_API) | {'__version__'})
