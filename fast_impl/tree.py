"Walk module trees: index paths (`[4, 0]`), dotted names (`'layer1.0'`), and the modules they lead to."
from __future__ import annotations

__all__ = ['Node', 'walk', 'get_module', 'find_module', 'to_steps', 'path_name', 'index_path', 'unwrap',
           'unique_params', 'num_params', 'is_leaf', 'n_layers', 'eval_mode', 'copy_to']

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import torch
from torch import nn

from .layers import CONTAINERS

Path = Union[int, str, Sequence[Union[int, str]], None]


class _KeyError(KeyError):
    "A KeyError whose message prints as written (KeyError quotes its message)"
    def __str__(self): return str(self.args[0])


@dataclass
class Node:
    "One module in a walk: its index path from the root, dotted name, depth and the module"
    path: tuple[int, ...]
    name: str
    module: nn.Module

    @property
    def depth(self) -> int: return len(self.path)


def unwrap(model: nn.Module) -> nn.Module:
    "`model` without its DistributedDataParallel/DataParallel or `torch.compile` wrappers"
    # those wrap it as `.module` and `._orig_mod`
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)): model = model.module
        elif hasattr(model, '_orig_mod') and isinstance(model._orig_mod, nn.Module): model = model._orig_mod
        else: return model


def walk(model: nn.Module, depth: int | None = None, path: tuple = (), name: str = '') -> Iterator[Node]:
    "Yield `Node`s depth-first in definition order, root first, down to `depth`"
    # a shared module is yielded at every place it appears
    yield Node(path, name, model)
    if depth is not None and len(path) >= depth: return
    for i, (n, child) in enumerate(model.named_children()):
        yield from walk(child, depth, path + (i,), f'{name}.{n}' if name else n)


def to_steps(path: Path) -> list[int | str]:
    "Normalise `path` (int, dotted name, or a list mixing both) into a list of steps"
    if path is None: return []
    if isinstance(path, int): return [path]
    if isinstance(path, str): return [s for s in path.split('.') if s != ''] if path else []
    steps = []
    for p in path:
        if isinstance(p, bool) or not isinstance(p, (int, str)):
            raise TypeError(f"path steps must be ints or names, got {p!r} ({type(p).__name__}) in {path!r}")
        steps += to_steps(p)
    return steps


def _listing(m: nn.Module) -> str:
    kids = [f'[{i}] ({n}) {type(c).__name__}' for i, (n, c) in enumerate(m.named_children())]
    if not kids: return f'{type(m).__name__} has no children'
    shown = ', '.join(kids[:12]) + (f', ... ({len(kids)} in all)' if len(kids) > 12 else '')
    return f'valid children of {type(m).__name__}: {shown}'


def _step(m: nn.Module, step: int | str, done: list) -> tuple[str, nn.Module]:
    where = '.'.join(done) or 'the root'
    kids = list(m.named_children())
    if isinstance(step, int):
        if not -len(kids) <= step < len(kids):
            raise IndexError(f"index {step} is out of range at {where} ({len(kids)} children); {_listing(m)}")
        return kids[step]
    named = dict(kids)
    if step not in named:
        raise _KeyError(f"no child named {step!r} at {where}; {_listing(m)}")
    return step, named[step]


def find_module(model: nn.Module, path: Path) -> tuple[str, tuple[int, ...], nn.Module]:
    "The dotted name, index path and module that `path` leads to in `model`"
    names, idxs, m = [], [], model
    for step in to_steps(path):
        n, child = _step(m, step, names)
        idxs.append([k for k, _ in m.named_children()].index(n))
        names.append(n)
        m = child
    return '.'.join(names), tuple(idxs), m


def get_module(arch, path: Path = None) -> nn.Module:
    "The module of `arch` at `path`: an int, a list of ints (`[4, 0]`), a dotted name (`'layer1.0'`) or a mix"
    from .archs import resolve
    return find_module(unwrap(resolve(arch)), path)[2]


def path_name(model: nn.Module, path: Path) -> str:
    "The dotted name of the module at `path`"
    return find_module(model, path)[0]


def index_path(model: nn.Module, path: Path) -> tuple[int, ...]:
    "The index path of the module at `path`"
    return find_module(model, path)[1]


def unique_params(module: nn.Module, trainable: bool | None = None) -> list[nn.Parameter]:
    "Parameters of `module`, each tied tensor once, optionally only those (not) requiring grad"
    return [p for p in module.parameters() if trainable is None or p.requires_grad == trainable]


def num_params(module: nn.Module, trainable: bool | None = None) -> int:
    "Number of elements in the parameters of `module` (tied weights once)"
    return sum(p.numel() for p in unique_params(module, trainable))


def is_leaf(m: nn.Module) -> bool:
    "A module with no children that does something (an empty Sequential/ModuleList is not a layer)"
    return not any(True for _ in m.children()) and not isinstance(m, CONTAINERS)


def n_layers(m: nn.Module) -> int:
    "Seed 004's layer count: children of a Sequential, leaf modules of anything else (a leaf counts 1)"
    if isinstance(m, nn.Sequential) and len(m): return len(m)
    return sum(is_leaf(x) for x in m.modules())


@contextmanager
def eval_mode(model: nn.Module):
    "Put `model` in eval mode, restoring every module's own `training` flag afterwards"
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, t in modes: m.training = t


def copy_to(model: nn.Module, device) -> nn.Module:
    "A deep copy of `model` on `device`, tied weights kept tied"
    # each tensor goes straight to `device` (no CPU copy)
    memo = {}
    for t in [*model.parameters(), *model.buffers()]:
        moved = t.detach().to(device)
        memo[id(t)] = nn.Parameter(moved, t.requires_grad) if isinstance(t, nn.Parameter) else moved
    try: return copy.deepcopy(model, memo)
    except Exception as e:
        raise TypeError(f"cannot copy {type(model).__name__} to {device} ({type(e).__name__}: {e}); "
                        f"pass its builder or name instead, or a model already on {device}") from e
