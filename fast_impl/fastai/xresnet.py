"fastai's xresnet family by name (the `fastai:` arch source), and xresnet18 at half width for the digits."
from __future__ import annotations

__all__ = ['xresnet', 'xresnet18_half']

from fastai.vision.models import xresnet as _xresnet


def xresnet(name: str):
    "The builder of fastai's xresnet `name` ('xresnet18', 'xresnet50_deep', ...)"
    return getattr(_xresnet, name)


def xresnet18_half(pretrained=False, **kwargs):
    "fastai's xresnet18 at half width (2.8M parameters): small enough for CPUs"
    return _xresnet.xresnet18(pretrained, widen=0.5, **kwargs)
