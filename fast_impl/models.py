"The seed architectures (seeds 000-003) as proper `nn.Module`s: same layers, same names, no prints."
from __future__ import annotations

__all__ = ['Plain18Layer', 'Plain28Layer', 'SimpleCNN', 'Inception', 'NewInception', 'AsymInception',
           'InceptionModule', 'AlexNet', 'ResBlk', 'ResNet18', 'VGG', 'VGG_CFGS']

import torch
from torch import nn
from torch.nn import functional as F


def _convs(ni: int, widths: list[int]) -> list[nn.Module]:
    "3x3 bias-free convs with ReLU, from `ni` channels through each of `widths`"
    layers = []
    for nf in widths:
        layers += [nn.Conv2d(ni, nf, kernel_size=3, padding=1, bias=False), nn.ReLU()]
        ni = nf
    return layers


class _PlainNet(nn.Sequential):
    "A plain (residual-free) conv net: a Sequential, so parameter names are those of seed 000"
    # seed 000's names: `0.weight`, ...
    stages: list[list[int]] = []

    def __init__(self, n_out: int | None = None):
        layers, ni = _convs(3, [8]), 8
        for i, widths in enumerate(self.stages):
            if i: layers.append(nn.MaxPool2d(2, 2))
            layers += _convs(ni, widths)
            ni = widths[-1]
        # optional classifier (off by default, so the seed figures hold)
        if n_out: layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ni, n_out)]
        super().__init__(*layers)

    @property
    def network(self) -> nn.Sequential:
        "The seed's `.network` attribute: the model itself"
        return self


class Plain18Layer(_PlainNet):
    "Seed 000's 18-layer plain net (4 convs per stage at 16, 32, 64, 128 channels): 685,656 parameters"
    stages = [[16] * 4, [32] * 4, [64] * 4, [128] * 4]


class Plain28Layer(_PlainNet):
    "Seed 000's deeper net at the same budget"
    # stage 4 stays at 32 channels, stage 5 starts with 4 more 32-convs
    stages = [[16] * 4, [32] * 4, [32] * 14, [32] * 4 + [128] * 4]


class SimpleCNN(nn.Module):
    "Seed 001: one `filter_size` conv (3 -> 32 channels, 'same' padding), ReLU and a 2x2 max-pool"
    def __init__(self, filter_size: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=filter_size, stride=1, padding=(filter_size - 1) // 2)
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x): return self.maxpool(F.relu(self.conv1(x)))


def _conv_relu(ni: int, nf: int, ks, pad) -> list[nn.Module]:
    return [nn.Conv2d(ni, nf, kernel_size=ks, stride=1, padding=pad), nn.ReLU()]


class _Branches(nn.Module):
    "Runs `branch1`, `branch2`, ... on the same input and concatenates them on channels"
    def forward(self, x):
        return torch.cat([b(x) for n, b in self.named_children() if n.startswith('branch')], dim=1)


class Inception(_Branches):
    "Seed 001: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 branches; Inception(3, 32) has 35,264 parameters"
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        ni, nf = in_channels, out_channels
        self.branch1 = nn.Conv2d(ni, nf, kernel_size=1, stride=1, padding=0)
        self.branch2 = nn.Sequential(*_conv_relu(ni, nf, 1, 0), *_conv_relu(nf, nf, 3, 1))
        self.branch3 = nn.Sequential(*_conv_relu(ni, nf, 1, 0), *_conv_relu(nf, nf, 5, 2))


class NewInception(_Branches):
    "Seed 001: the 5x5 branch factorized into two 3x3 convs; NewInception(3, 32) has 28,128 parameters"
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        ni, nf = in_channels, out_channels
        self.branch1 = nn.Conv2d(ni, nf, kernel_size=1, stride=1, padding=0)
        self.branch2 = nn.Sequential(*_conv_relu(ni, nf, 1, 0), *_conv_relu(nf, nf, 3, 1))
        self.branch3 = nn.Sequential(*_conv_relu(ni, nf, 1, 0), *_conv_relu(nf, nf, 3, 1),
                                     *_conv_relu(nf, nf, 3, 1))


class AsymInception(_Branches):
    "Seed 001: every 3x3 factorized into 3x1 then 1x3; AsymInception(3, 32) has 19,008 parameters"
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        ni, nf = in_channels, out_channels
        asym = lambda: _conv_relu(nf, nf, (3, 1), (1, 0)) + _conv_relu(nf, nf, (1, 3), (0, 1))
        self.branch1 = nn.Conv2d(ni, nf, kernel_size=1, stride=1, padding=0)
        self.branch2 = nn.Sequential(*_conv_relu(ni, nf, 1, 0), *asym())
        self.branch3 = nn.Sequential(*_conv_relu(ni, nf, 1, 0), *asym(), *asym())


class InceptionModule(_Branches):
    "Seed 003: GoogLeNet's 4-branch module (1x1 | 1x1-3x3 | 1x1-5x5 | maxpool-1x1)"
    # one ReLU shared by all branches
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        ni, nf, relu = in_channels, out_channels, nn.ReLU()
        conv = lambda i, ks, pad: nn.Conv2d(i, nf, kernel_size=ks, stride=1, padding=pad)
        self.branch1 = nn.Sequential(conv(ni, 1, 0), relu)
        self.branch2 = nn.Sequential(conv(ni, 1, 0), conv(nf, 3, 1), relu)
        self.branch3 = nn.Sequential(conv(ni, 1, 0), conv(nf, 5, 2), relu)
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1), conv(ni, 1, 0), relu)


class AlexNet(nn.Module):
    "Seed 003: AlexNet (5 convs from an 11x11 kernel, 3 linear layers with dropout)"
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class ResBlk(nn.Module):
    "Seed 002's residual block: two 3x3 conv-BN, plus a 1x1 conv-BN shortcut (`extra`) when channels change"
    def __init__(self, ch_in: int, ch_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch_in, ch_out, kernel_size=3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(ch_out)
        self.conv2 = nn.Conv2d(ch_out, ch_out, kernel_size=3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(ch_out)
        self.extra = nn.Sequential()
        if ch_out != ch_in:
            self.extra = nn.Sequential(nn.Conv2d(ch_in, ch_out, kernel_size=1, stride=1),
                                       nn.BatchNorm2d(ch_out))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(self.extra(x) + out)


class ResNet18(nn.Module):
    "Seed 002's simplified ResNet18: conv-BN stem, ResBlk(16,16), ResBlk(16,32), a linear layer on 32x32 maps"
    def __init__(self, num_classes: int = 10, img_size: int = 32):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1), nn.BatchNorm2d(16))
        self.blk1 = ResBlk(16, 16)
        self.blk2 = ResBlk(16, 32)
        self.outlayer = nn.Linear(32 * img_size * img_size, num_classes)
        self.default_cfg = {'input_size': (3, img_size, img_size)}  # the size it takes (timm's convention)

    def forward(self, x):
        x = self.blk2(self.blk1(F.relu(self.conv1(x))))
        return self.outlayer(x.reshape(x.shape[0], -1))


VGG_CFGS = {  # channels per conv, 'M' a 2x2 max-pool (Simonyan & Zisserman, table 1, configs A, B, D, E)
    'vgg11': [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'vgg13': [64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'vgg16': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'],
    'vgg19': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M',
              512, 512, 512, 512, 'M'],
}


class VGG(nn.Module):
    "Seed 003's VGG: `depth` 11, 13, 16 or 19 (or a config name such as 'vgg16'), optionally with BatchNorm"
    def __init__(self, depth: int | str = 16, num_classes: int = 1000, batch_norm: bool = False):
        super().__init__()
        name = depth if isinstance(depth, str) else f'vgg{depth}'
        if name not in VGG_CFGS:
            raise ValueError(f"VGG depth {depth!r} is not one of {sorted(VGG_CFGS)} (or 11, 13, 16, 19)")
        self.features = nn.Sequential(*self._features(VGG_CFGS[name], batch_norm))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, num_classes))

    @staticmethod
    def _features(cfg: list, batch_norm: bool) -> list[nn.Module]:
        layers, ni = [], 3
        for v in cfg:
            if v == 'M': layers.append(nn.MaxPool2d(kernel_size=2, stride=2)); continue
            layers.append(nn.Conv2d(ni, v, kernel_size=3, padding=1))
            if batch_norm: layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            ni = v
        return layers

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
