"The plan: a model's ordered blocks, from the first strategy that applies, with the family fixes applied."
from __future__ import annotations

__all__ = ['STRATEGIES', 'plan', 'StrategyError']

from typing import Sequence

from torch import nn

from ..registry import Registry
from .blocks import Block, Index, Plan, as_model, under, view
from .fixes import apply_fixes
from .generic import generic_blocks
from .hf import hf_blocks
from .rules import apply_rules, head_modules
from .timm import timm_blocks

# name -> f(index, headless) -> list[Block] | None (None: does not apply)
STRATEGIES = Registry('split strategy')
STRATEGIES.register('hf')(hf_blocks)
STRATEGIES.register('timm')(timm_blocks)
STRATEGIES.register('generic')(generic_blocks)


class StrategyError(ValueError):
    "A split strategy asked for by name that does not apply to the model"


def plan(model, strategy: str | None = None, input_size: Sequence[int] | None = None, head=None,
         input_data=None, trace=False) -> Plan:
    """The ordered blocks of `model` from the first strategy that applies.

    Args:
        model: a module, wrapped or not, or an arch name.
        strategy: a name in `STRATEGIES` ('hf', 'timm', 'generic'); by default the first that applies.
        input_size: the input of the forward pass on meta that orders the blocks
            (default: the arch's own size, else one fitted to its first layer).
        head: module names or index paths that belong to the head group, beside those the rules find.
        input_data: example inputs for that pass instead of `input_size`: a tensor, a tuple of positional
            inputs or a dict of keyword inputs (token ids, masks, several images).
        trace: the `fast_impl.forward.Trace` of a pass recorded already (None: none ran), instead of a
            new pass.
    """
    if isinstance(model, Plan): return model
    model = as_model(model)
    v, ix = view(model), Index(model, input_size, trace, input_data)
    body = ix if v.body is model else Index(v.body, trace=ix.trace and ix.trace.within(v.prefix))
    blocks, s = _strategy_blocks(body, v, strategy)
    blocks = [Block([v.prefix + p for p in b.params],
                    [v.prefix + m if m else v.prefix.rstrip('.') for m in b.modules],
                    b.role, b.stage, b.whole) for b in blocks]
    if v.head is not None: blocks = _add_head(blocks, ix, v.head)
    return Plan(model, apply_rules(blocks, ix, head_modules(model, head)), s, ix)


def _strategy_blocks(body: Index, v, strategy: str | None) -> tuple[list[Block], str]:
    "The blocks of the first strategy that applies (or of `strategy`), with the family fixes applied"
    for s in [strategy] if strategy else list(STRATEGIES):
        blocks = STRATEGIES.get_or_raise(s)(body, v.head is not None)
        if blocks: return apply_fixes(blocks, v.body), s
    if v.head is not None: return [], s
    if strategy and any(True for _ in v.model.parameters()):
        raise StrategyError(f"split strategy {strategy!r} does not apply to {type(v.model).__name__}; "
                            f"valid: {', '.join(STRATEGIES)}, or None for the first that applies")
    raise ValueError(f"{type(v.model).__name__} has no parameters to split")


def _add_head(blocks: list[Block], ix: Index, head: str) -> list[Block]:
    "Append the fastai head (its parameters) to the body's blocks; a body head (norm left over) joins it"
    params = [n for n, _ in ix.params if under(n, head)]
    last = max((b.stage for b in blocks), default=-1) + 1
    for b in blocks:
        if b.role == 'head': b.stage = last
    return blocks + [Block(params, [head], 'head', last)]
