"What kind of layer a module is: one home for norms, weight layers, containers and classifiers."
from __future__ import annotations

__all__ = ['NORMS', 'CONTAINERS', 'is_norm', 'is_layer', 'classifiers']

from torch import nn

# torch's norms; any class named `*Norm*` counts too (timm's BatchNormAct2d, LayerNorm2d, RmsNorm, HF's ...)
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
         getattr(nn, 'RMSNorm', nn.LayerNorm))
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def is_norm(m: nn.Module) -> bool:
    "True for a norm layer: vectors of its own (a scale, a shift), no child with parameters, a norm's class"
    own = list(m.parameters(recurse=False))
    if not own or any(p.ndim > 1 for p in own) or any(True for c in m.children() for _ in c.parameters()):
        return False
    return isinstance(m, NORMS) or 'Norm' in type(m).__name__


def is_layer(m: nn.Module) -> bool:
    "True for a conv or linear layer: a module holding its own `weight` matrix or kernel, not a norm"
    w = m._parameters.get('weight')
    return w is not None and w.ndim >= 2 and not is_norm(m)


def classifiers(body: nn.Module) -> list[nn.Module]:
    "Classifiers: timm's `get_classifier()`, else the last Linear, else a top-level `classifier`/`fc`/`head`"
    get = getattr(body, 'get_classifier', None)
    if callable(get):
        try: c = get()
        except Exception: c = None
        cs = [m for m in (c if isinstance(c, (tuple, list)) else [c]) if isinstance(m, nn.Module)]
        if cs or c is not None: return [m for m in cs if any(True for _ in m.parameters())]
    lins = [m for m in body.modules() if isinstance(m, nn.Linear)]
    if lins: return lins[-1:]
    kids = dict(body.named_children())
    return [kids[n] for n in ('classifier', 'fc', 'head', 'heads', 'last_linear') if n in kids
            and any(True for _ in kids[n].parameters())][:1]
