"The splitting rules (`fast_impl.split.rules.RULES`), each on models written for it and on registry models."
from __future__ import annotations

import pickle, warnings

import pytest
import torch
from torch import nn

from fast_impl.archs import resolve
from fast_impl.split import (first_use_order, group_names, n_splitter, plan, split_at, split_n, split_stages,
                             splitter, stage_blocks, stage_splitter)
from test_split import assert_order, assert_partition, holds, same_tensors
from test_split_sample import built_model


# ---------------------------------------------------------------- the splitting rules
# (fast_impl.split.rules.RULES)

def _cbr(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Reordered(nn.Module):
    "A net whose `__init__` registers head, stage3, stage2, stage1, stem: reverse of the order they run in"
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(32, 10)
        self.stage3 = nn.Sequential(_cbr(16, 32, 2), _cbr(32, 32))
        self.stage2 = nn.Sequential(_cbr(8, 16, 2), _cbr(16, 16))
        self.stage1 = nn.Sequential(_cbr(8, 8), _cbr(8, 8))
        self.stem = _cbr(3, 8, 2)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.head(x.mean((2, 3)))


def _no_warnings():
    w = warnings.catch_warnings()
    w.__enter__()
    warnings.simplefilter('error')
    return w


def test_forward_order_not_registration_order():
    "Rule 1: groups run stem -> stage1 -> stage2 -> stage3 -> head, whatever `__init__`'s registration order"
    m = Reordered()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        gs, g3, ga = split_stages(m), split_n(m, 3), split_at(m, ['stage2', 'head'])
    want = [m.stem, m.stage1, m.stage2, m.stage3, m.head]
    assert [list(map(id, g)) for g in gs] == [[id(p) for p in x.parameters()] for x in want]
    first = [*m.stem.parameters(), *m.stage1.parameters()]
    assert same_tensors(g3[0], first) or holds(g3[0], m.stem[0].weight)
    assert same_tensors(g3[-1], m.head.parameters())
    assert same_tensors(ga[0], first) and same_tensors(ga[-1], m.head.parameters())
    for g in (gs, g3, ga): assert_partition(m, g); assert_order(m, g)


def test_registration_order_fallback_warns():
    "Rule 1: where no forward pass can run, registration order is used and split_stages says so"
    m = Reordered()
    m.forward = lambda x, y: x
    with pytest.warns(UserWarning, match='no forward pass on the meta device ran.*registered'):
        gs = split_stages(m)
    assert_partition(m, gs)


def _backbone(kind):
    if kind == 'timm':
        import timm
        return timm.create_model('resnet18', num_classes=0, pretrained=False)
    import torchvision
    b = torchvision.models.resnet18()
    b.fc = nn.Identity()
    return b


class MlpHead(nn.Module):
    "A pretrained backbone (no classifier) with a new MLP head, as people build for fine-tuning"
    def __init__(self, kind):
        super().__init__()
        self.backbone = _backbone(kind)
        self.head = nn.Sequential(nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Linear(256, 7))

    def forward(self, x): return self.head(self.backbone(x))


class TwoHeads(nn.Module):
    "Two heads on the same pooled features, the first one registered before the backbone"
    def __init__(self):
        super().__init__()
        self.boxes = nn.Linear(512, 4)
        self.backbone = _backbone('torchvision')
        self.classes = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 5))

    def forward(self, x):
        f = self.backbone(x)
        return self.classes(f), self.boxes(f)


@pytest.mark.parametrize('kind', ['timm', 'torchvision'])
def test_everything_after_the_backbone_is_head(kind):
    "Rule 2: a new MLP head (Linear, BatchNorm1d, ReLU, Dropout, Linear) is the head group, in every split"
    m = MlpHead(kind)
    gs, g4 = split_stages(m), split_n(m, 4)
    assert same_tensors(gs[-1], m.head.parameters()) and same_tensors(g4[-1], m.head.parameters())
    assert len(gs) == 6 and same_tensors(gs[-2], m.backbone.layer4.parameters())
    for g in (gs, g4): assert_partition(m, g); assert_order(m, g)


def test_two_heads_are_one_head_group():
    "Rule 2: both heads on the same features are the head, however they are named and registered"
    m = TwoHeads()
    gs = split_stages(m)
    assert same_tensors(gs[-1], [*m.boxes.parameters(), *m.classes.parameters()])
    assert same_tensors(gs[0], [*m.backbone.conv1.parameters(), *m.backbone.bn1.parameters()])
    assert_partition(m, gs); assert_order(m, gs)


def test_head_argument_for_what_no_rule_sees():
    "`head=` puts named modules (names or index paths) in the head group of every split and splitter"
    m = resolve('torchvision:resnet18')
    want = [*m.layer4.parameters(), *m.fc.parameters()]
    for gs in (split_stages(m, head='layer4'), split_n(m, 3, head=['layer4', 'fc']),
               split_at(m, 'layer2', head=[[7]]), splitter('stages', head='layer4')(m),
               n_splitter(3, head='layer4')(m), stage_splitter(head=[7])(m)):
        assert same_tensors(gs[-1], want), [len(g) for g in gs]
        assert_partition(m, gs)
    assert len(split_at(m, 'layer2', head='layer4')) == 3
    # the downsample norm leading stages.3 stays with it, though rule 5 would move it
    c = resolve('convnext_atto')
    last = [*c.stages[3].parameters(), *c.head.parameters()]
    assert same_tensors(split_stages(c, head='stages.3')[-1], last)
    with pytest.raises(KeyError, match='valid children of ResNet: .*layer4'): split_stages(m, head='layer9')
    assert repr(stage_splitter(head='layer4')) == "stage_splitter(head='layer4')"
    s = n_splitter(3, head=['layer4'])
    assert pickle.loads(pickle.dumps(s)) == s


class RootTokens(nn.Module):
    "A ViT-like net with its class token and position embedding on the root, used before the first block"
    def __init__(self, d=48, n=6):
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU())
                                      for _ in range(n)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 17, d))
        self.patch = nn.Conv2d(3, d, 8, 8)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def test_tokens_used_before_the_blocks_are_stem():
    "Rule 4: tokens and position embeddings used before the first block are stem; rule 5: the final norm"
    m = RootTokens()
    gs = split_stages(m)
    assert same_tensors(gs[0], [m.cls_token, m.pos_embed, *m.patch.parameters()]) and len(gs) == 8
    assert same_tensors(gs[-1], m.head.parameters())
    assert holds(gs[-2], m.norm.weight)  # the final norm runs on the tokens
    assert_partition(m, gs); assert_order(m, gs, (1, 3, 32, 32))


def test_late_class_token_stays_where_it_is_used():
    "Rule 4's other half: CaiT's class token enters only at the class-attention blocks and stays there"
    m = resolve('cait_xxs24_224')
    gs = split_stages(m)
    first = next(i for i, g in enumerate(gs) if holds(g, m.blocks_token_only[0].attn.q.weight))
    assert holds(gs[first], m.cls_token) and not holds(gs[0], m.cls_token)


@pytest.mark.parametrize('name', ['mobilenetv4_conv_small', 'mobilenetv4_hybrid_medium',
                                  'mobilenetv3_small_050'])
def test_norm_stays_with_its_layer(name):
    "Rule 3: `conv_head` and `norm_head` (run on pooled features) are in one group, the head, in every split"
    from fast_impl.split.check import norm_splits
    m = resolve(name)
    p = plan(m)
    for gs in (split_stages(p), split_n(p, 4), split_n(p, 6)):
        assert norm_splits(p, group_names(m, gs)) == []
        assert holds(gs[-1], m.conv_head.weight) and holds(gs[-1], m.classifier.weight)
        if hasattr(m, 'norm_head') and any(True for _ in m.norm_head.parameters()):
            assert holds(gs[-1], m.norm_head.weight)


@pytest.mark.parametrize('name, norm, head', [('vit_base_patch16_224', 'norm', False),
                                              ('swin_tiny_patch4_window7_224', 'norm', False),
                                              ('torchvision:swin_t', 'norm', False),
                                              ('convnext_tiny', 'head.norm', True),
                                              ('torchvision:densenet121', 'features.norm5', False)])
def test_final_norm_one_rule(name, norm, head):
    "Rule 5: a final norm on the last feature map joins the last block; one on pooled features is head"
    m = resolve(name)
    gs = split_stages(m)
    w = m.get_submodule(norm).weight
    assert holds(gs[-1], w) == head and holds(gs[-1 if head else -2], w)


@pytest.mark.parametrize('name', ['torchvision:inception_v3', 'hrnet_w18_small', 'vit_small_r26_s32_224',
                                  'torchvision:convnext_tiny', 'torchvision:swin_t', 'torchvision:googlenet'])
def test_stages_follow_resolution(name):
    "Rule 6: a small stem, and no body group spanning more than one change of resolution"
    from fast_impl.split.check import body_resolutions
    m = resolve(name)
    p = plan(m)
    gs = split_stages(p)
    sizes = [sum(x.numel() for x in g) for g in gs]
    assert sizes[0] < .05 * sum(sizes) and len(gs) >= 5
    assert all(len(r) <= 2 for r in body_resolutions(p, group_names(m, gs)))
    assert_partition(m, gs); assert_order(m, gs)


def test_named_stems():
    "Inception v3's stem is its five stem convolutions; HRNet's stem stops before `layer1`"
    assert stage_blocks('torchvision:inception_v3')[0] == ['Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3',
                                                           'Conv2d_3b_1x1', 'Conv2d_4a_3x3']
    assert stage_blocks('hrnet_w18_small')[:2] == [['conv1', 'bn1', 'conv2', 'bn2'], ['layer1']]
    # downsample first
    assert stage_blocks('torchvision:convnext_tiny')[2][:2] == ['features.2.0', 'features.2.1']


@pytest.mark.parametrize('name', ['torchvision:resnet50', 'torchvision:vit_b_16', 'swinv2_cr_tiny_ns_224',
                                  'efficientnet_b0', 'coat_lite_tiny', 'mobilenetv4_hybrid_medium'])
def test_trace_shortcuts_are_exact(name):
    "The trace's shape shortcuts match the plain meta forward pass: order, norm links, sizes and head start"
    from fast_impl.forward import record, trace
    from fast_impl.inputs import example_inputs, input_sizes
    m = built_model(name)
    inputs = example_inputs(input_sizes(m)[0], None, torch.device('meta'), batch=2)
    fast, plain = trace(m), record(m, inputs, count=False, order=True).trace
    assert ((fast.order, fast.norm_of, fast.size, fast.head_from)
            == (plain.order, plain.norm_of, plain.size, plain.head_from))
    assert fast.order == first_use_order(m)


def test_group_params_in_forward_order():
    "Inside each group the parameters are listed in the order the forward pass first uses them"
    for m, size in ((Reordered(), None), (RootTokens(), (1, 3, 32, 32)),
                    (resolve('torchvision:vit_b_16'), None)):
        order = {n: i for i, n in enumerate(first_use_order(m, size))}
        for ns in group_names(m, split_stages(m)):
            used = [order[n] for n in ns if n in order]
            assert used == sorted(used)
