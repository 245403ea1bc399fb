"""Layer groups of models written for the tests: an encoder-decoder, a CNN with an LSTM, a grayscale CNN,
a tiny hierarchical transformer; the rules checked as invariants (norms with layers, stages follow resolution,
the head the same under every split), and split_at's checks on its cuts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fast_impl.split import GroupError, check_groups, group_names, plan, split_at
from fast_impl.split.check import norm_splits
from fast_impl.split.groups import named_blocks, named_n, named_stages


def cbr(ci: int, co: int, s: int = 1) -> nn.Sequential:
    "Conv, BatchNorm, ReLU"
    return nn.Sequential(nn.Conv2d(ci, co, 3, s, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU())


def level(ci: int, co: int) -> nn.Sequential:
    "Two conv blocks: one level of a U-Net"
    return nn.Sequential(cbr(ci, co), cbr(co, co))


class UNet(nn.Module):
    "A small U-Net: three encoder levels, a bottleneck, three decoder levels with skips, a 1x1 output conv"
    def __init__(self, c=8, n_out=2):
        super().__init__()
        self.down = nn.ModuleList([level(3 if i == 0 else c * 2 ** (i - 1), c * 2 ** i) for i in range(3)])
        self.mid = nn.Sequential(cbr(c * 4, c * 8), cbr(c * 8, c * 8))
        self.up = nn.ModuleList([nn.ConvTranspose2d(c * 2 ** (i + 1), c * 2 ** i, 2, 2) for i in (2, 1, 0)])
        self.dec = nn.ModuleList([level(c * 2 ** (i + 1), c * 2 ** i) for i in (2, 1, 0)])
        self.out = nn.Conv2d(c, n_out, 1)

    def forward(self, x):
        skips = []
        for d in self.down:
            x = d(x); skips.append(x); x = F.max_pool2d(x, 2)
        x = self.mid(x)
        for u, d, s in zip(self.up, self.dec, reversed(skips)): x = d(torch.cat([u(x), s], 1))
        return self.out(x)


class CNNLSTM(nn.Module):
    "Three stride-2 conv blocks, then an LSTM over the width, then a linear classifier"
    def __init__(self, n=10):
        super().__init__()
        self.features = nn.Sequential(cbr(1, 16, 2), cbr(16, 32, 2), cbr(32, 64, 2))
        self.rnn = nn.LSTM(64 * 4, 64, batch_first=True)
        self.fc = nn.Linear(64, n)

    def forward(self, x):
        x = self.features(x).permute(0, 3, 1, 2).flatten(2)  # B, W/8, 64 * 4
        x, _ = self.rnn(x)
        return self.fc(x[:, -1])


class GrayCNN(nn.Module):
    "A grayscale CNN: conv blocks, global pool, a linear head"
    def __init__(self, n=10):
        super().__init__()
        self.body = nn.Sequential(cbr(1, 16), nn.MaxPool2d(2), cbr(16, 32), nn.MaxPool2d(2), cbr(32, 64))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, n))

    def forward(self, x): return self.head(self.body(x))


class Block(nn.Module):
    "A pre-norm transformer block"
    def __init__(self, d):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class Merge(nn.Module):
    "Patch merging: 2x2 neighbours to one token, channels doubled"
    def __init__(self, d):
        super().__init__()
        self.norm, self.proj = nn.LayerNorm(4 * d), nn.Linear(4 * d, 2 * d)

    def forward(self, x):
        B, N, C = x.shape
        s = int(N ** .5)
        x = x.view(B, s // 2, 2, s // 2, 2, C).permute(0, 1, 3, 2, 4, 5).reshape(B, N // 4, 4 * C)
        return self.proj(self.norm(x))


class TinySwin(nn.Module):
    "A tiny hierarchical transformer: patch embedding, 3 stages of 2 blocks with patch merging, norm, head"
    def __init__(self, d=16, n=5):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 4, 4)
        self.stages = nn.ModuleList()
        for i in range(3):
            merge = [Merge(d * 2 ** i)] if i < 2 else []
            self.stages.append(nn.Sequential(*[Block(d * 2 ** i) for _ in range(2)], *merge))
        self.norm, self.fc = nn.LayerNorm(d * 4), nn.Linear(d * 4, n)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        for s in self.stages: x = s(x)
        return self.fc(self.norm(x).mean(1))


class FlatGray(nn.Module):
    "A grayscale CNN written flat: conv, norm, act, pool ...; the last norm ends the body before the head"
    def __init__(self, n=10):
        super().__init__()
        conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1)
        self.features = nn.Sequential(conv(1, 8), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      conv(8, 16), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, n))

    def forward(self, x): return self.classifier(F.relu(self.features(x)))


class PoolBlock(nn.Module):
    "A pre-norm MetaFormer block on a feature map: x + mix(norm(x)), then x + mlp(norm(x))"
    def __init__(self, c):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(1, c), nn.GroupNorm(1, c)
        self.mlp = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.GELU(), nn.Conv2d(2 * c, c, 1))

    def forward(self, x):
        y = self.norm1(x)
        x = x + F.avg_pool2d(y, 3, 1, 1) - y
        return x + self.mlp(self.norm2(x))


class Embed(nn.Module):
    "A patch embedding: a strided conv and an optional norm (none here)"
    def __init__(self, ci, co, k):
        super().__init__()
        self.proj, self.norm = nn.Conv2d(ci, co, k, k), nn.Identity()

    def forward(self, x): return self.norm(self.proj(x))


class PoolNet(nn.Module):
    """Stage embeddings in one list, stages in another (as Hugging Face's PoolFormer); each stage's first
    block opens with a norm that takes the embedding conv's output, which also flows on in the residual"""
    def __init__(self, c=8, n=5):
        super().__init__()
        cs = [c, 2 * c, 4 * c]
        self.embeds = nn.ModuleList([Embed(3, c, 4), Embed(c, cs[1], 2), Embed(cs[1], cs[2], 2)])
        self.stages = nn.ModuleList([nn.Sequential(PoolBlock(k), PoolBlock(k)) for k in cs])
        self.norm, self.fc = nn.GroupNorm(1, 4 * c), nn.Linear(4 * c, n)

    def forward(self, x):
        for e, s in zip(self.embeds, self.stages): x = s(e(x))
        return self.fc(self.norm(x).mean((2, 3)))


class Unfolded(nn.Module):
    "A transformer layer on 2x2-unfolded patches (as MobileViT): (B*4, positions/4, C) tokens, folded back"
    def __init__(self, c):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(c), nn.Linear(c, c)

    def forward(self, x):
        B, C, H, W = x.shape
        t = x.reshape(B, C, H // 2, 2, W // 2, 2).permute(0, 3, 5, 2, 4, 1).reshape(B * 4, H * W // 4, C)
        t = t + self.fc(self.norm(t))
        return t.reshape(B, 2, 2, H // 2, W // 2, C).permute(0, 5, 3, 1, 4, 2).reshape(B, C, H, W)


class UnfoldNet(nn.Module):
    "A conv stem, then three stages: a stride-2 conv block and a transformer layer on unfolded patches"
    def __init__(self, c=8, n=5):
        super().__init__()
        self.stem = cbr(3, c, 2)
        cs = [c, 2 * c, 4 * c, 8 * c]
        self.stages = nn.ModuleList([nn.Sequential(cbr(cs[i], cs[i + 1], 2), Unfolded(cs[i + 1]))
                                     for i in range(3)])
        self.fc = nn.Linear(c * 8, n)

    def forward(self, x):
        x = self.stem(x)
        for s in self.stages: x = s(x)
        return self.fc(x.mean((2, 3)))


class TorchViT(nn.Module):
    "A ViT written with nn.TransformerEncoder: its layers sit in a list inside a wrapper module"
    def __init__(self, d=32, n=5):
        super().__init__()
        self.patch, self.cls = nn.Conv2d(3, d, 8, 8), nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, 17, d))
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.norm, self.fc = nn.LayerNorm(d), nn.Linear(d, n)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        return self.fc(self.norm(self.enc(x))[:, 0])


def _build(cls):
    with torch.device('meta'): return cls()


def _split(m, size, split):
    """(plan, names, groups as dotted parameter names) of `split` on the plan of `m` for input `size`, checked
    to partition the parameters with every norm in its layer's group"""
    p = plan(m, input_size=size)
    named = split(p)
    gs = group_names(m, [g for _, g in named])
    assert sorted(n for g in gs for n in g) == sorted(n for n, _ in m.named_parameters())
    assert norm_splits(p, gs) == []
    return p, [n for n, _ in named], gs


def _groups(m, size, split): return _split(m, size, split)[1:]


def _owners(group: list[str]) -> set[str]: return {n.rpartition('.')[0] for n in group}


def test_unet_backbone_decoder_head():
    "The deepest point ends the backbone; growing maps are decoder groups; the 1x1 output conv is the head"
    m = _build(UNet)
    names, gs = _groups(m, (1, 3, 64, 64), named_stages)
    assert names == ['stage 1', 'stage 2', 'stage 3', 'stage 4',
                     'decoder 1', 'decoder 2', 'decoder 3', 'head']
    assert gs[-1] == ['out.weight', 'out.bias']
    assert {o.split('.')[0] for o in _owners(gs[3])} == {'mid'}  # the bottleneck: the deepest stage
    for i, g in enumerate(gs[4:7]):  # each decoder level: its up-conv and its conv blocks
        assert {'.'.join(o.split('.')[:2]) for o in _owners(g)} == {f'up.{i}', f'dec.{i}'}
    bnames, bgs = _groups(m, (1, 3, 64, 64), named_blocks)
    assert bgs[-1] == gs[-1] and bnames[-1] == 'head'  # the same head under blocks


def test_cnn_lstm_stem_cut_at_resolutions():
    "Three stride-2 conv blocks before an LSTM: a stem of one, a stage per resolution, the LSTM, the head"
    m = _build(CNNLSTM)
    names, gs = _groups(m, (1, 1, 32, 128), named_stages)
    assert names == ['stem', 'stage 1', 'stage 2', 'stage 3', 'head']
    assert [sorted({o.split('.')[0] + '.' + o.split('.')[1] if '.' in o else o for o in _owners(g)})
            for g in gs[:3]] == [['features.0'], ['features.1'], ['features.2']]
    assert gs[3][0].startswith('rnn.') and gs[-1] == ['fc.weight', 'fc.bias']


@pytest.mark.parametrize('split', [named_stages, named_blocks, lambda m: named_n(m, 3)])
def test_grayscale_cnn_norms_stay_with_their_convs(split):
    "Every norm in the group of the conv whose output it takes, under every split; the head: the Linear"
    _, _, gs = _split(_build(FlatGray), (1, 1, 28, 28), split)
    assert gs[-1] == ['classifier.2.weight', 'classifier.2.bias']
    assert any('features.9.weight' in g and 'features.8.weight' in g for g in gs)


def test_tiny_hierarchical_transformer_stages_follow_resolution():
    "Three stages at three token counts; patch merging starts the next stage; blocks are never cut"
    m = _build(TinySwin)
    names, gs = _groups(m, (1, 3, 64, 64), named_stages)
    assert names == ['stem', 'stage 1', 'stage 2', 'stage 3', 'head']
    merge0 = {n for n in gs[2] if n.startswith('stages.0.2.')}
    assert merge0 == {'stages.0.2.norm.weight', 'stages.0.2.norm.bias', 'stages.0.2.proj.weight',
                      'stages.0.2.proj.bias'}
    bnames, bgs = _groups(m, (1, 3, 64, 64), named_blocks)
    where = {n: i for i, g in enumerate(bgs) for n in g}
    for s in range(3):
        for b in range(2):
            assert len({where[n] for n in where if n.startswith(f'stages.{s}.{b}.')}) == 1
    assert set(bgs[-1]) - {'norm.weight', 'norm.bias'} == set(gs[-1])  # the final norm joins the head: blocks


def test_split_at_rejects_unordered_and_duplicate_cuts():
    "One line naming the cut given twice, or the cut out of forward order with the order to use"
    m = _build(GrayCNN)
    with pytest.raises(GroupError, match=r"cut 'body.2' given twice"): split_at(m, ['body.2', 'body.2'])
    with pytest.raises(GroupError, match=r"'body.2' runs before 'body.4'.*\['body.2', 'body.4'\]"):
        split_at(m, ['body.4', 'body.2'])
    check_groups(m, split_at(m, ['body.2', 'body.4']))


@pytest.mark.parametrize('split', [named_stages, named_blocks, lambda m: named_n(m, 3)])
def test_pre_norm_opening_a_block_stays_in_it(split):
    """A norm taking a layer's output that also flows on (a residual stream) is the next block's, not that
    layer's: no link, so no norm apart, and each stage embedding opens its stage"""
    p, names, gs = _split(_build(PoolNet), (1, 3, 64, 64), split)
    assert not any(n.endswith('.0.norm1') for n in p.index.trace.norm_of)
    where = {n: i for i, g in enumerate(gs) for n in g}
    for i in range(3):  # a block is never cut from its opening norm
        assert where[f'stages.{i}.0.norm1.weight'] == where[f'stages.{i}.0.mlp.0.weight']
    if split is named_stages:
        assert names == ['stem', 'stage 1', 'stage 2', 'stage 3', 'head']
        for i in (1, 2): assert where[f'embeds.{i}.proj.weight'] == where[f'stages.{i}.0.norm1.weight']


def test_tokens_of_unfolded_patches_count_positions_per_sample():
    """Windows or unfolded patches folded into the batch: a linear layer's positions are per sample (the whole
    map), so the transformer layer stays in the stage of the conv that made its map"""
    p, names, gs = _split(_build(UnfoldNet), (1, 3, 64, 64), named_stages)
    size = p.index.trace.size
    assert [size[f'stages.{i}.1.fc'] for i in range(3)] == [(256,), (64,), (16,)]
    assert [size[f'stages.{i}.0.0'] for i in range(3)] == [(16, 16), (8, 8), (4, 4)]
    assert names == ['stem', 'stage 1', 'stage 2', 'stage 3', 'head']
    for i in range(3): assert {o.split('.')[1] for o in _owners(gs[i + 1])} == {str(i)}


def test_layers_inside_a_wrapper_module_are_the_blocks():
    """A list of encoder layers inside a wrapper (nn.TransformerEncoder's `layers`): one group per layer, the
    tokens and patch embedding the stem, the final norm with the last stage (stages) or the head (blocks)"""
    m = _build(TorchViT)
    names, gs = _groups(m, (1, 3, 32, 32), named_stages)
    assert names == ['stem', 'stage 1', 'stage 2', 'stage 3', 'stage 4', 'head']
    assert sorted(gs[0]) == ['cls', 'patch.bias', 'patch.weight', 'pos']
    for i in range(4): assert {o.rpartition('.')[0] for o in _owners(gs[i + 1]) if o.startswith('enc.')} \
        <= {f'enc.layers.{i}', f'enc.layers.{i}.self_attn'}
    assert gs[-1] == ['fc.weight', 'fc.bias'] and {'norm.weight', 'norm.bias'} <= set(gs[-2])
    bnames, bgs = _groups(m, (1, 3, 32, 32), named_blocks)
    assert bnames == ['stem', 'block 1', 'block 2', 'block 3', 'block 4', 'head']
    assert set(bgs[-1]) == {'norm.weight', 'norm.bias', 'fc.weight', 'fc.bias'}

