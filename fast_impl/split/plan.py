"The plan: a model's ordered blocks, from the first strategy that applies, with the family fixes applied."
from __future__ import annotations

__all__ = ['STRATEGIES', 'plan', 'StrategyError']

from torch import nn

from ..registry import Registry
from .blocks import Block, Index, Plan, as_model, under, view
from .fixes import apply_fixes
from .generic import generic_blocks
from .timm import timm_blocks

STRATEGIES = Registry('split strategy')  # name -> f(index, headless) -> list[Block] | None (None: does not apply)
STRATEGIES.register('timm')(timm_blocks)
STRATEGIES.register('generic')(generic_blocks)


class StrategyError(ValueError):
    "A split strategy asked for by name that does not apply to the model"


def plan(model, strategy: str | None = None) -> Plan:
    "The ordered blocks of `model` (a module, wrapped or not, or an arch name) from the first strategy that applies"
    if isinstance(model, Plan): return model
    model = as_model(model)
    v, ix = view(model), Index(model)
    body = ix if v.body is model else Index(v.body)
    names = [strategy] if strategy else list(STRATEGIES)
    for s in names:
        blocks = STRATEGIES.get_or_raise(s)(body, v.head is not None)
        if blocks:
            blocks = apply_fixes(blocks, v.body)
            break
    if not blocks and v.head is None:
        if strategy and any(True for _ in model.parameters()):
            raise StrategyError(f"split strategy {strategy!r} does not apply to {type(model).__name__}; "
                                f"valid: {', '.join(STRATEGIES)}, or None for the first that applies")
        raise ValueError(f"{type(model).__name__} has no parameters to split")
    blocks = [Block([v.prefix + p for p in b.params], [v.prefix + m if m else v.prefix.rstrip('.') for m in b.modules],
                    b.role, b.stage, b.whole) for b in blocks]
    if v.head is not None: blocks = _add_head(blocks, ix, v.head)
    return Plan(model, blocks, s, ix)


def _add_head(blocks: list[Block], ix: Index, head: str) -> list[Block]:
    "Append the fastai head (its parameters) to the body's blocks; a body head (norm left over) joins it"
    params = [n for n, _ in ix.params if under(n, head)]
    last = max((b.stage for b in blocks), default=-1) + 1
    for b in blocks:
        if b.role == 'head': b.stage = last
    return blocks + [Block(params, [head], 'head', last)]
