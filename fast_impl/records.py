"""What one forward pass records: each module's `Call`, the `Trace` the splitters cut from (parameters by
first use, norm links, map sizes), the `Recording`; `Links` follows layer outputs to the norms that take them.

Plain data and bookkeeping, no hooks or modes: those are `fast_impl.forward`'s, which fills these."""
from __future__ import annotations

__all__ = ['Call', 'Trace', 'Recording', 'Links', 'shapes', 'is_map', 'first_tensor', 'adjacent']

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from .layers import is_layer, is_norm


@dataclass
class Call:
    "What the pass saw of one module: number of calls, input and output shapes of the first call"
    calls: int = 0
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


@dataclass
class Trace:
    "The order of the pass: parameters by first use, where the head starts, norms' layers, feature-map sizes"
    order: list[str]  # parameter names by first use (unused ones left out)
    # position in `order` of the first parameter used after the last op on a feature map
    head_from: int | None
    # norm module -> the conv/linear whose output it takes
    norm_of: dict[str, str] = field(default_factory=dict)
    size: dict[str, tuple[int, ...]] = field(default_factory=dict)  # layer on a map -> its output's positions

    @cached_property
    def rank(self) -> dict[str, int]: return {n: i for i, n in enumerate(self.order)}

    @property
    def late(self) -> list[str]:
        "Parameters first used after the last op on a feature map (on pooled features): none without a map"
        return [] if self.head_from is None else self.order[self.head_from:]

    def within(self, prefix: str) -> Trace:
        "This trace seen from the submodule whose names start with `prefix` (names without it)"
        cut = lambda d: {k[len(prefix):]: v[len(prefix):] if isinstance(v, str) else v for k, v in d.items()
                         if k.startswith(prefix) and (not isinstance(v, str) or v.startswith(prefix))}
        order = [n[len(prefix):] for n in self.order if n.startswith(prefix)]
        late = set(self.late)
        head_from = next((i for i, n in enumerate(order) if prefix + n in late),
                         None if self.head_from is None else len(order))
        return Trace(order, head_from, cut(self.norm_of), cut(self.size))


@dataclass
class Recording:
    "Everything one forward pass recorded"
    model: nn.Module
    device: str
    inputs: list  # shapes of every input tensor
    outputs: list  # shapes of every output tensor
    calls: dict  # module -> Call
    macs: dict = field(default_factory=dict)  # module -> mult-adds of its own ops
    depth: int = 0  # most counted ops on one path (with `structure`)
    weight_ops: int = 0  # counted ops that use a weight of the model (with `structure`)
    trace: Trace | None = None  # with `order`


def shapes(x) -> list[list[int]]:
    "Shapes of every tensor in the (nested) structure `x`"
    if isinstance(x, torch.Tensor): return [list(x.shape)]
    if (type(x) is tuple and len(x) == 2 and type(x[0]) is tuple and not x[1]
            and all(isinstance(t, torch.Tensor) for t in x[0])):  # (args, kwargs): tensors, no kwargs
        return [list(t.shape) for t in x[0]]
    return [list(t.shape) for t in tree_leaves(x) if isinstance(t, torch.Tensor)]


def is_map(t: torch.Tensor, batch: int) -> bool:
    "True for a feature map or token sequence (several positions per sample), False for pooled features"
    return t.ndim >= 2 and (t.shape[0] != batch or sum(d > 1 for d in t.shape[1:]) >= 2)

def first_tensor(x):
    "`x` if a tensor, else the first tensor of the list or tuple `x`, else None"
    if isinstance(x, torch.Tensor): return x
    if isinstance(x, (list, tuple)): return next((t for t in x if isinstance(t, torch.Tensor)), None)
    return None


class Links:
    """Each norm linked to the layer whose output it alone takes (a raw output that also flows on, as a
    residual stream into a pre-norm block, links to no norm); each layer's output positions on a map"""
    def __init__(self, batch: int):
        self.outs, self.norm_of, self.size, self.batch = {}, {}, {}, batch
        self.claim, self.open = {}, {}  # tensor id -> the norm that took it: while it runs, after it ran

    @staticmethod
    def kinds(model: nn.Module) -> dict[nn.Module, tuple[str, bool]]:
        "The modules to watch: each conv/linear layer and norm, with its name and whether it is a norm"
        return {m: (n, is_norm(m)) for n, m in model.named_modules() if is_layer(m) or is_norm(m)}

    def before(self, name: str, norm: bool, args) -> None:
        t = first_tensor(args)
        if t is None or id(t) not in self.outs: return
        layer, _ = self.outs[id(t)]
        if norm and layer is not None:
            self.norm_of.setdefault(name, layer)
            self.claim[id(t)] = name
        self.reused(id(t))
        # a norm (or layer) that takes the same tensor later does not normalise that layer's output alone
        self.outs[id(t)] = (None, t)

    def ran(self, name: str, args) -> None:
        "Norm `name` has run: any later use of the output it took unlinks it"
        t = first_tensor(args)
        if t is not None and self.claim.get(id(t)) == name: self.open[id(t)] = self.claim.pop(id(t))

    def reused(self, i: int) -> None:
        "The tensor of id `i` is used after its norm ran: the norm does not take the layer's output alone"
        if i in self.open: self.norm_of.pop(self.open.pop(i), None)

    def after(self, name: str, m: nn.Module, args, out) -> None:
        t, x = first_tensor(out), first_tensor(args)
        if t is None: return
        self.outs.setdefault(id(t), (name, t))  # the tensor is kept, so its id is not reused during the pass
        if name in self.size or x is None or not is_map(x, self.batch) or t.ndim < 3: return
        if isinstance(m, nn.modules.conv._ConvNd):
            if len(m.kernel_size) == 2: self.size[name] = tuple(t.shape[2:])
            return
        pos = tuple(t.shape[1:-1])  # positions: tokens, or pixels of a channels-last map
        n = t.shape[0]  # windows or unfolded patches folded into the batch: positions per sample
        folded = n != self.batch and n % self.batch == 0
        self.size[name] = (n // self.batch * math.prod(pos),) if folded else pos


def adjacent(norm_of: dict[str, str], order: list[str]) -> dict[str, str]:
    "The links where the norm is the next layer with parameters to run after its layer (nothing in between)"
    at = {}
    for i, n in enumerate(order): at.setdefault(n.rpartition('.')[0], []).append(i)
    return {nm: ly for nm, ly in norm_of.items() if nm in at and ly in at and min(at[nm]) == max(at[ly]) + 1}
