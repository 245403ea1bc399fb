"Layer-group splitters: partition, forward order and head-last guarantees."
# Checked on tiny models, random trees and a registry sample.
from __future__ import annotations

import pickle, warnings

import pytest
import torch
from torch import nn

from fast_impl import models
from fast_impl.archs import resolve
from fast_impl.split import (GroupError, Splitter, at_splitter, check_groups, group_names, group_table,
                             n_splitter, order_violations, plan, split_at, split_n, split_stages, splitter,
                             stage_blocks, stage_splitter)


def _ids(groups): return [id(p) for g in groups for p in g]
def holds(group, p) -> bool: return any(q is p for q in group)
# the same tensors, any order
def same_tensors(a, b) -> bool: return sorted(id(p) for p in a) == sorted(id(p) for p in b)


def assert_partition(model, groups):
    "Every parameter of `model` exactly once, no empty group"
    check_groups(model, groups)
    assert sorted(_ids(groups)) == sorted(id(p) for p in model.parameters())
    assert all(groups)


def assert_order(model, groups, input_size=None):
    assert order_violations(model, groups, input_size=input_size) == []


def assert_head_last(model, groups, head: nn.Module):
    assert {id(p) for p in head.parameters()} <= {id(p) for p in groups[-1]}


# ---------------------------------------------------------------- tiny models

class Tied(nn.Module):
    "An embedding tied to its decoder, a root token and a frozen layer"
    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 8))
        self.emb = nn.Linear(4, 8)
        self.body = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(4)])
        self.frozen = nn.Linear(8, 8).requires_grad_(False)
        self.out = nn.Linear(8, 8)
        self.dec = nn.Linear(8, 8)
        self.dec.weight = self.out.weight

    def forward(self, x): return self.dec(self.out(self.frozen(self.body(self.emb(x) + self.token))))


@pytest.mark.parametrize('split', [split_stages, lambda m: split_n(m, 3),
                                   lambda m: split_at(m, ['body.2', 'out'])])
def test_partition_tied_root_frozen(split):
    m = Tied()
    gs = split(m)
    assert_partition(m, gs)
    assert_order(m, gs, (2, 4))
    assert holds(gs[0], m.token) and holds(gs[-1], m.dec.bias)
    assert holds([p for g in gs for p in g], m.frozen.weight)


def test_resnet18_stages(golden):
    m = resolve('torchvision:resnet18')
    gs = split_stages(m)
    assert [g[0] for g in stage_blocks(m)] == ['conv1', 'layer1.0', 'layer2.0', 'layer3.0', 'layer4.0', 'fc']
    assert_partition(m, gs); assert_order(m, gs); assert_head_last(m, gs, m.fc)
    golden('groups_resnet18', str(group_table(m, gs)))


def test_vit_tokens_in_stem(golden):
    m = resolve('torchvision:vit_b_16')
    gs = split_stages(m)
    assert len(gs) == 14
    assert holds(gs[0], m.class_token) and holds(gs[0], m.encoder.pos_embedding)  # used before block 0
    assert_partition(m, gs); assert_order(m, gs); assert_head_last(m, gs, m.heads)
    golden('groups_vit_b_16', str(group_table(m, gs)))


def test_timm_matcher_and_names(golden):
    m = resolve('convnext_tiny')
    p = plan(m)
    assert p.strategy == 'timm'
    gs = split_stages(m)
    assert len(gs) == 6
    assert group_names(m, gs)[-1] == ['head.norm.weight', 'head.norm.bias', 'head.fc.weight', 'head.fc.bias']
    golden('groups_convnext_tiny', str(group_table(m, gs)))


def test_vgg_matcher_rejected():
    "timm's VGG matcher puts 93% in the head: the generic detection cuts the features at their pools instead"
    m = resolve('vgg16')
    assert plan(m).strategy == 'generic'
    gs = split_stages(m)
    # pre_logits.fc1 (a 7x7 conv) runs on the last feature map: body;
    # fc2 runs on its 1x1 output: head (rule 2)
    assert len(gs) == 7 and same_tensors(gs[-1], [*m.pre_logits.fc2.parameters(), *m.head.parameters()])
    assert holds(gs[-2], m.pre_logits.fc1.weight)


def test_seeds():
    with torch.device('meta'):
        ms = [models.Plain18Layer(), models.Plain28Layer(), models.AlexNet(), models.ResNet18(),
              models.VGG(11)]
    for m in ms:
        gs = split_stages(m)
        assert_partition(m, gs)
        assert len(gs) >= 3, type(m).__name__
    m = models.Plain18Layer(n_out=10)
    gs = split_stages(m)
    assert_head_last(m, gs, m[-1]); assert_order(m, gs, (1, 3, 32, 32))


class RootScale(nn.Module):
    "A root parameter `name` used after the stem (after the classifier when `late`)"
    # maybe the classifier defined first (`fc_first`)
    def __init__(self, name='scale', late=False, fc_first=False, shared=False):
        super().__init__()
        if fc_first: self.fc = nn.Linear(8, 10)
        self.name, self.late = name, late
        setattr(self, name, nn.Parameter(torch.ones(1)))
        self.stem = nn.Conv2d(3, 8, 3)
        self.body = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in range(4)])
        if shared: self.body[2] = self.body[1]  # one module at two places
        self.pool = nn.AdaptiveAvgPool2d(1)
        if not fc_first: self.fc = nn.Linear(8, 10)

    def forward(self, x):
        s = getattr(self, self.name)
        if self.late: return self.fc(self.pool(self.body(self.stem(x))).flatten(1)) * s
        return self.fc(self.pool(self.body(self.stem(x) * s)).flatten(1))


@pytest.mark.parametrize('kw', [dict(name='scale'), dict(name='gamma'), dict(name='logit_scale'),
                                dict(name='alpha'), dict(name='scale', fc_first=True),
                                dict(name='alpha', fc_first=True), dict(name='scale', shared=True)])
def test_root_param_does_not_collapse(kw):
    "A root parameter named like a late scale, or a classifier defined first, never merges body into head"
    m = RootScale(**kw)
    before = [(n, p) for n, p in m.named_parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        gs, g3 = split_stages(m), split_n(m, 3)
    assert len(gs) >= 3 and len(g3) == 3
    for g in (gs, g3): assert_partition(m, g); assert_order(m, g, (1, 3, 16, 16))
    assert holds(gs[0], getattr(m, kw['name'])) and same_tensors(gs[-1], m.fc.parameters())
    # traced on a copy
    assert all(p is q and not p.is_meta for (_, p), (_, q) in zip(before, m.named_parameters()))


@pytest.mark.parametrize('traced', [True, False])
def test_root_scale_used_last_joins_head(traced):
    "A root scale used after the classifier joins the head"
    # seen in a meta forward pass, else guessed from its name
    m = RootScale('gamma', late=True)
    # the meta forward pass fails: the name decides, and a warning says so
    if not traced: m.forward = lambda x, y: x
    with (warnings.catch_warnings() if traced
          else pytest.warns(UserWarning, match='no forward pass on the meta')):
        if traced: warnings.simplefilter('error')
        gs = split_stages(m)
    assert len(gs) >= 3 and holds(gs[-1], m.gamma) and len(gs[-1]) == 3
    assert_partition(m, gs)


def test_one_group_warns():
    "One group from several blocks, or fewer than `n` groups, always says so"
    m = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1))
    with pytest.warns(UserWarning, match='one layer group for 2 blocks'): assert len(split_stages(m)) == 1
    with pytest.warns(UserWarning, match='1 groups instead of 3'):
        assert len(split_n(nn.Linear(2, 2), 3)) == 1
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert len(split_stages(nn.Linear(2, 2))) == len(split_n(m, 1)) == 1


# ---------------------------------------------------------------- split_n, split_at, errors

def test_split_n_balanced():
    m = resolve('torchvision:resnet50')
    gs = split_n(m, 4)
    sizes = [sum(p.numel() for p in g) for g in gs]
    assert len(gs) == 4 and max(sizes) < .4 * sum(sizes) and same_tensors(gs[-1], m.fc.parameters())
    assert_order(m, gs)
    assert len(split_n(m, 1)) == 1


def test_split_n_fewer_blocks_warns():
    m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with pytest.warns(UserWarning, match='instead of 10'): gs = split_n(m, 10)
    assert_partition(m, gs)


@pytest.mark.parametrize('n', [0, -1, 2.5, True, '3'])
def test_split_n_bad(n):
    with pytest.raises(ValueError, match='n must be'): split_n(models.Plain18Layer(), n)


def test_split_at_paths():
    m = resolve('torchvision:resnet18')
    by_name = split_at(m, ['layer2', 'layer4'])
    assert [len(g) for g in by_name] == [len(g) for g in split_at(m, [[5], [7]])]
    assert len(by_name) == 3 and by_name[1][0] is m.layer2[0].conv1.weight
    assert len(split_at(m, 'layer3')) == 2 and len(split_at(m, [6])) == 2 and len(split_at(m, [[4, 1]])) == 2


def test_split_at_errors():
    m = resolve('torchvision:resnet18')
    with pytest.raises(KeyError, match='valid children of ResNet: .*layer1'): split_at(m, 'layer9')
    with pytest.raises(IndexError, match='out of range'): split_at(m, [[99]])
    with pytest.raises(GroupError, match='empty'): split_at(m, ['conv1'])
    with pytest.raises(ValueError, match='at least one cut'): split_at(m, [])


def test_check_groups_names_problems():
    m = resolve('torchvision:resnet18')
    gs = split_stages(m)
    with pytest.raises(GroupError, match=r'missing parameters \(2\): fc.weight, fc.bias'):
        check_groups(m, gs[:-1])
    with pytest.raises(GroupError, match=r'duplicated parameters \(1\): conv1.weight'):
        check_groups(m, gs + [[m.conv1.weight]])
    with pytest.raises(GroupError, match='empty groups'): check_groups(m, gs + [[]])
    with pytest.raises(GroupError, match='not parameters of the model'):
        check_groups(m, gs + [[nn.Parameter(torch.zeros(2))]])


def test_group_table_formats():
    m = resolve('torchvision:resnet18')
    t = group_table(m, split_stages(m))
    df = t.to_df()
    assert list(df.columns) == ['group', 'first', 'last', 'tensors', 'params', 'pct', 'trainable']
    assert df.params.sum() == sum(p.numel() for p in m.parameters()) and abs(df.pct.sum() - 100) < .1
    assert df['first'].iloc[-1] == 'fc' and '<table>' in t._repr_html_() and '| group |' in t.to_markdown()


# ---------------------------------------------------------------- wrappers and fastai

def test_wrappers():
    m = resolve('torchvision:resnet18')
    want = [len(g) for g in split_stages(m)]
    for w in (nn.DataParallel(m), torch.compile(m)):
        assert [len(g) for g in split_stages(w)] == want
        assert [len(g) for g in splitter('stages')(w)] == want
        assert len(n_splitter(3)(w)) == 3 and len(at_splitter('layer3')(w)) == 2


def _fastai():
    warnings.simplefilter('ignore')
    return pytest.importorskip('fastai.vision.learner')


def test_fastai_timm_body():
    fl = _fastai()
    with torch.device('meta'): m, _ = fl.create_timm_model('convnext_tiny', 10, pretrained=False)
    gs = split_stages(m)
    assert len(gs) == 6 and stage_blocks(m)[1][0].startswith('0.model.stages.0')
    assert_partition(m, gs); assert_head_last(m, gs, m[1]); assert_order(m, gs)
    gs4 = stage_splitter()(m), split_n(m, 4), split_at(m, 'stages.2'), split_at(m, '0.model.stages.2')
    for g in gs4: assert_partition(m, g)
    assert [len(g) for g in gs4[2]] == [len(g) for g in gs4[3]]


def test_fastai_cut_torchvision_body():
    fl = _fastai()
    import torchvision
    with torch.device('meta'): m = fl.create_vision_model(torchvision.models.resnet34, 10, pretrained=False)
    gs = split_stages(m)
    assert len(gs) == 6 and same_tensors(gs[-1], m[1].parameters())
    assert_partition(m, gs); assert_order(m, gs)
    assert len(split_n(m, 4)) == 4 and same_tensors(split_n(m, 4)[-1], m[1].parameters())


def test_splitters_pickle():
    "Splitters are module-level: they pickle (for `learn.export()`), read back equal and split the same"
    m = resolve('torchvision:resnet18')
    for s in (stage_splitter(), n_splitter(3), at_splitter(['layer2', [7]]), splitter('layer3'), splitter(4),
              splitter()):
        back = pickle.loads(pickle.dumps(s))
        assert isinstance(back, Splitter) and back == s
        assert repr(back) == repr(s) and splitter(back.groups) == s
        assert [list(map(id, g)) for g in back(m)] == [list(map(id, g)) for g in s(m)]
    assert repr(stage_splitter()) == 'stage_splitter()' and repr(n_splitter(3)) == 'n_splitter(3)'
    assert repr(at_splitter('layer3')) == "at_splitter('layer3')"


def _image(i) -> torch.Tensor: return torch.zeros(3, 16, 16)
def _label(i) -> torch.Tensor: return torch.tensor(i % 2)


def test_fastai_export_with_splitter(tmp_path):
    "A fastai Learner with a split.py splitter exports and loads back with the same groups"
    _fastai()
    from fastai.data.core import Datasets
    from fastai.learner import Learner, load_learner
    dsets = Datasets(range(4), tfms=[[_image], [_label]], splits=[[0, 1], [2, 3]])
    dls = dsets.dataloaders(bs=2, num_workers=0)
    learn = Learner(dls, RootScale(), loss_func=nn.CrossEntropyLoss(), splitter=stage_splitter())
    learn.export(tmp_path / 'learn.pkl')
    back = load_learner(tmp_path / 'learn.pkl')
    assert back.splitter == stage_splitter()
    assert [len(g) for g in back.splitter(back.model)] == [len(g) for g in learn.splitter(learn.model)]


def test_splitter_bad_input():
    with pytest.raises(ValueError, match="'stages', 'blocks', a number of groups"): splitter(3.5)
    with pytest.raises(ValueError, match='n must be'): n_splitter(0)
    with pytest.raises(ValueError, match='unknown splitter kind'): Splitter('bad')
