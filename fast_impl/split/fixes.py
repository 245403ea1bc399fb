"Family fixes, as data: parameters a strategy puts in a block before or after the one that first uses them."
from __future__ import annotations

__all__ = ['Fix', 'FIXES', 'apply_fixes']

import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from .blocks import Block, owner, under


@dataclass(frozen=True)
class Fix:
    "Move the parameters matching `src` into the block holding the first parameter that `dst` matches"
    src: str  # regex of the parameters to move
    # regex of the target's parameter (may use `src`'s groups), or f(model)
    dst: str | Callable[[nn.Module], str]
    why: str  # the family and the reason, for the reader
    last: bool = False  # the target is the block of the last parameter `dst` matches
    when: Callable[[nn.Module], bool] | None = None  # applies only to models where this holds

    def target(self, m: re.Match, model: nn.Module) -> str:
        "The regex naming the target parameter, for a parameter whose name matched `src` as `m`"
        return self.dst(model) if callable(self.dst) else m.expand(self.dst)


def _cait(m: nn.Module) -> bool: return hasattr(m, 'blocks_token_only')


def _convit_first_gpsa(m: nn.Module) -> str: return rf'^blocks\.{getattr(m, "local_up_to_layer", -1)}\.'


FIXES: tuple[Fix, ...] = (
    Fix(r'^cls_token$', r'^cls_attn_blocks\.0\.',
        'xcit: the class token enters at the class-attention blocks'),
    Fix(r'^cls_token$', r'^norm\.', 'cait: the class token enters after the blocks', when=_cait),
    Fix(r'^blocks_token_only\.', r'^norm\.',
        "cait: the matcher overlaps the class-attention blocks with the last blocks"),
    Fix(r'^cls_token$', r'^post_network\.0\.', 'volo: the class token enters at the post network'),
    Fix(r'^pos_embed$', r'^network\.2\.', 'volo: the position embedding is added after the first stage'),
    Fix(r'^cls_token$', _convit_first_gpsa, 'convit: the class token enters after the local (GPSA) layers'),
    Fix(r'^c?rpe(\d)\.', r'^serial_blocks\1\.0\.', 'coat: position encodings shared by a serial stage'),
    Fix(r'^cpe(\d)\.', r'^serial_blocks\1\.0\.', 'coat: convolutional position encodings of a serial stage'),
    Fix(r'^rope\.', r'^patch_embed\.', 'vit with rope: computed before the tokens are built'),
    Fix(r'^(incre|downsamp)_modules\.', r'^incre_modules\.0\.',
        'hrnet: incre and downsamp modules interleave'),
    Fix(r'^norm\.(\d+)\.', r'^stages\.\1\.', 'efficientvim: a norm after each stage', last=True),
    Fix(r'^shared_rel_pos\.', r'^patch_embed\.', 'vit_srelpos: computed once, used by every block'),
)
_ANY = re.compile('|'.join(f'(?:{f.src})' for f in FIXES))


def apply_fixes(blocks: list[Block], model: nn.Module) -> list[Block]:
    "Apply `FIXES` in turn: move each matching parameter into the block of the parameter its fix names"
    where = {n: b for b in blocks for n in b.params}
    targets: dict[tuple[str, bool], Block | None] = {}
    cands = [n for n in where if _ANY.match(n)]
    for fix in FIXES:
        if fix.when is not None and not fix.when(model): continue
        rx = re.compile(fix.src)
        for n in [n for n in cands if rx.match(n)]:
            key = (fix.target(rx.match(n), model), fix.last)
            if key not in targets:
                hits = [m for m in where if re.match(key[0], m)]
                targets[key] = where[hits[-1 if fix.last else 0]] if hits else None
            to = targets[key]
            if to is None or to is where[n]: continue
            where[n].params.remove(n)
            to.params.append(n)
            to.whole, where[n] = True, to
            to.modules.append(owner(n))
    for b in blocks: b.modules = [m for m in dict.fromkeys(b.modules) if any(under(p, m) for p in b.params)]
    return [b for b in blocks if b.params]
