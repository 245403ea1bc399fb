"""Layer groups of Hugging Face transformers vision models, built from small configs on meta (no download):
stages from the config, embeddings in the stem, encoder layers never cut, decoder groups, no-decay names."""
from __future__ import annotations

import pytest
import torch

from fast_impl.inputs import native_input_size
from fast_impl.optim import param_groups
from fast_impl.split import group_names, plan
from fast_impl.split.check import norm_splits
from fast_impl.split.groups import named_blocks, named_stages
from fast_impl.split.hf import encoder_layers, is_hf

transformers = pytest.importorskip('transformers')

VIT = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32,
           patch_size=8)


def _build(cls: str, cfg: str, **kw):
    "`transformers.<cls>(<cfg>(**kw))` on meta"
    with torch.device('meta'): return getattr(transformers, cls)(getattr(transformers, cfg)(**kw))


def _splits(m):
    "(names, parameter names) of split_stages and of split_blocks, both checked to partition `m`"
    p = plan(m)
    out = []
    for split in (named_stages, named_blocks):
        named = split(p)
        gs = group_names(m, [g for _, g in named])
        assert sorted(n for g in gs for n in g) == sorted(n for n, _ in m.named_parameters())
        assert norm_splits(p, gs) == []
        out.append(([n for n, _ in named], gs))
    return out


def _no_layer_cut(m, groups: list[list[str]]) -> None:
    "Every encoder layer of `m` inside one group"
    where = {n: i for i, g in enumerate(groups) for n in g}
    for layer in encoder_layers(m):
        assert len({i for n, i in where.items() if n.startswith(layer + '.')}) == 1, layer


def _starts(groups: list[list[str]]) -> list[str]:
    return [g[0].rpartition('.')[0] for g in groups]


def test_convnext_one_stage_per_config_stage():
    "Stem, one group per `depths` entry (the downsampling layer opens its stage), the head"
    m = _build('ConvNextForImageClassification', 'ConvNextConfig', depths=[1, 1, 2, 1],
               hidden_sizes=[8, 16, 32, 64], image_size=64)
    assert is_hf(m) and native_input_size(m) == (1, 3, 64, 64)
    (names, gs), (bnames, bgs) = _splits(m)
    assert names == ['stem', 'stage 1', 'stage 2', 'stage 3', 'stage 4', 'head']
    assert _starts(gs)[1:5] == ['convnext.encoder.stages.0.layers.0.dwconv',
                                'convnext.encoder.stages.1.downsampling_layer.0',
                                'convnext.encoder.stages.2.downsampling_layer.0',
                                'convnext.encoder.stages.3.downsampling_layer.0']
    assert len(bgs) == 1 + 5 + 1 and bnames[-1] == 'head'
    _no_layer_cut(m, gs); _no_layer_cut(m, bgs)
    assert set(gs[-1]) == set(bgs[-1])


def test_swin_patch_merging_opens_the_next_stage():
    "Swin's downsample sits at the end of each HF stage; it runs at the next resolution: next stage"
    m = _build('SwinForImageClassification', 'SwinConfig', depths=[1, 1, 2], num_heads=[1, 2, 4],
               embed_dim=16, image_size=64, patch_size=4, window_size=4)
    (names, gs), (_, bgs) = _splits(m)
    assert names == ['stem', 'stage 1', 'stage 2', 'stage 3', 'head']
    assert gs[2][0].startswith('swin.encoder.layers.0.downsample.')
    assert gs[0][0].startswith('swin.embeddings.') and all(n.startswith('swin.embeddings.') for n in gs[0])
    _no_layer_cut(m, gs); _no_layer_cut(m, bgs)


@pytest.mark.parametrize('cls,cfg', [('Dinov2WithRegistersModel', 'Dinov2WithRegistersConfig'),
                                     ('ViTForImageClassification', 'ViTConfig'),
                                     ('BeitForImageClassification', 'BeitConfig')])
def test_vit_like_embeddings_stem_layers_whole(cls, cfg):
    "Tokens and positions in the stem, one block per encoder layer (never cut), the final norm with the head"
    kw = dict(VIT, num_register_tokens=2) if 'Registers' in cls else VIT
    m = _build(cls, cfg, **kw)
    (names, gs), (bnames, bgs) = _splits(m)
    assert names[0] == 'stem' and sum(n.startswith('stage') for n in names) == 3
    assert bnames == ['stem', 'block 1', 'block 2', 'block 3', 'head'][:len(bnames)] and len(bnames) >= 4
    stem = set(gs[0])
    assert {n for n, _ in m.named_parameters() if '.embeddings.' in f'.{n}'} == stem
    _no_layer_cut(m, gs); _no_layer_cut(m, bgs)
    if 'ForImage' in cls: assert any('layernorm' in n or 'pooler' in n for n in bgs[-1])


def test_no_decay_on_hf_tokens_positions_and_layer_scales():
    "param_groups(wd=...) leaves HF tokens, position embeddings and BEiT's lambda_1/lambda_2 undecayed"
    m = _build('Dinov2WithRegistersModel', 'Dinov2WithRegistersConfig', **VIT, num_register_tokens=2)
    b = _build('BeitForImageClassification', 'BeitConfig', **VIT, layer_scale_init_value=0.1)
    for model in (m, b):
        groups = param_groups(model, 1e-3, wd=0.05)
        decayed = {id(q) for g in groups if g['weight_decay'] for q in g['params']}
        names = {n for n, q in model.named_parameters() if id(q) in decayed}
        assert not {n for n in names if any(k in n for k in ('token', 'position', 'lambda', 'layer_scale'))}
        assert any('attention' in n and n.endswith('.weight') for n in names)  # matrices keep their decay


def test_segformer_decoder_and_head():
    "The encoder's stages, the decode head's MLPs and fuse layer as decoder groups, the classifier the head"
    m = _build('SegformerForSemanticSegmentation', 'SegformerConfig', depths=[1, 1, 1, 1],
               hidden_sizes=[8, 16, 32, 64], decoder_hidden_size=16, num_attention_heads=[1, 1, 2, 2],
               image_size=64)
    (names, gs), (bnames, bgs) = _splits(m)
    assert names[:5] == ['stem', 'stage 1', 'stage 2', 'stage 3', 'stage 4'] and names[-1] == 'head'
    assert all(n.startswith('decoder') for n in names[5:-1]) and len(names) > 6
    assert gs[-1] == ['decode_head.classifier.weight', 'decode_head.classifier.bias'] == bgs[-1]
    assert all(n.startswith('decode_head.') for g, k in zip(gs, names) if k.startswith('decoder') for n in g)
    _no_layer_cut(m, gs); _no_layer_cut(m, bgs)


def test_headless_base_models_never_cut_a_layer():
    "A backbone without a task head (its pooler the head): stages and blocks keep every layer whole"
    m = _build('ResNetModel', 'ResNetConfig', depths=[1, 2, 1, 1], hidden_sizes=[8, 16, 32, 64],
               embedding_size=8)
    (names, gs), (_, bgs) = _splits(m)
    assert names[:5] == ['stem', 'stage 1', 'stage 2', 'stage 3', 'stage 4']
    _no_layer_cut(m, gs); _no_layer_cut(m, bgs)


def test_input_size_from_a_nested_vision_or_backbone_config():
    "The one input-size guess reads the config's own image size, else its vision or backbone config's"
    from types import SimpleNamespace as NS
    m = torch.nn.Conv2d(1, 4, 3)
    m.config = NS(vision_config=NS(image_size=96, num_channels=1))
    assert native_input_size(m) == (1, 1, 96, 96)
    m.config = NS(image_size=None, backbone_config=NS(image_size=(64, 48)))
    assert native_input_size(m) == (1, 3, 64, 48)
    m.config = NS(image_size=0)
    assert native_input_size(m) is None



class _Config:
    "What marks a Hugging Face model (duck typing): a config with a `model_type` and `to_dict`"
    model_type, image_size, num_channels = 'test', 32, 3
    def to_dict(self): return {}


class _Mixer(torch.nn.Module):
    """A stage as MobileViT's: a stride-2 conv, transformer layers on the map's tokens, then a norm (no layer
    on a map) and a 1x1 fusion conv at the stage's resolution"""
    def __init__(self, ci, c):
        super().__init__()
        nn = torch.nn
        self.down, self.layernorm = nn.Conv2d(ci, c, 3, 2, 1), nn.LayerNorm(c)
        self.fusion = nn.Conv2d(c, c, 1)
        self.transformer = nn.ModuleList([nn.Sequential(nn.LayerNorm(c), nn.Linear(c, 2 * c), nn.GELU(),
                                                        nn.Linear(2 * c, c)) for _ in range(2)])

    def forward(self, x):
        x = self.down(x)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        for layer in self.transformer: t = t + layer(t)
        return self.fusion(self.layernorm(t).transpose(1, 2).reshape(B, C, H, W))


class _MixNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config, self.stem = _Config(), torch.nn.Conv2d(3, 8, 3, 1, 1)
        self.layer = torch.nn.ModuleList([_Mixer(8, 16), _Mixer(16, 32), _Mixer(32, 64)])
        self.classifier = torch.nn.Linear(64, 5)

    def forward(self, pixel_values):
        x = self.stem(pixel_values)
        for s in self.layer: x = s(x)
        return self.classifier(x.mean((2, 3)))


def test_plain_modules_between_layers_stay_in_their_stage():
    """Between two stages' transformer layers, the norm and fusion conv at the first stage's resolution end
    it (a norm has no map size of its own: it goes with the plain block after it) and the stride-2 conv opens
    the next; under blocks they join the layer before and after them (the first stride-2 conv: the stem's)"""
    with torch.device('meta'): m = _MixNet()
    (names, gs), (bnames, bgs) = _splits(m)
    assert names == ['stem', 'stage 1', 'stage 2', 'stage 3', 'head']
    for i in range(3): assert {n.split('.')[1] for n in gs[i + 1]} == {str(i)}, gs[i + 1]
    where = {n: i for i, g in enumerate(bgs) for n in g}
    assert bnames[0] == 'stem' and where['layer.0.down.weight'] == 0
    for i in range(3):
        assert i == 0 or where[f'layer.{i}.down.weight'] == where[f'layer.{i}.transformer.0.1.weight']
        assert where[f'layer.{i}.layernorm.weight'] == where[f'layer.{i}.fusion.weight'] \
            == where[f'layer.{i}.transformer.1.1.weight']
