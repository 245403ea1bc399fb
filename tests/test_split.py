"Layer-group splitters: partition, forward order and head-last guarantees."
# Checked on tiny models, random trees and a registry sample.
from __future__ import annotations

import functools, pickle, warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from fast_impl import models
from fast_impl.archs import resolve
from fast_impl.split import (GroupError, Splitter, at_splitter, check_groups, first_use_order, group_names,
                             group_table, n_splitter, order_violations, plan, split_at, split_n, split_stages,
                             splitter, stage_blocks, stage_splitter)


def _ids(groups): return [id(p) for g in groups for p in g]
def _has(group, p) -> bool: return any(q is p for q in group)
# the same tensors, any order
def _same(a, b) -> bool: return sorted(id(p) for p in a) == sorted(id(p) for p in b)


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
    assert _has(gs[0], m.token) and _has(gs[-1], m.dec.bias)
    assert _has([p for g in gs for p in g], m.frozen.weight)


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
    assert _has(gs[0], m.class_token) and _has(gs[0], m.encoder.pos_embedding)  # used before block 0
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
    assert len(gs) == 7 and _same(gs[-1], [*m.pre_logits.fc2.parameters(), *m.head.parameters()])
    assert _has(gs[-2], m.pre_logits.fc1.weight)


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
    assert _has(gs[0], getattr(m, kw['name'])) and _same(gs[-1], m.fc.parameters())
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
    assert len(gs) >= 3 and _has(gs[-1], m.gamma) and len(gs[-1]) == 3
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
    assert len(gs) == 4 and max(sizes) < .4 * sum(sizes) and _same(gs[-1], m.fc.parameters())
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
    assert len(gs) == 6 and _same(gs[-1], m[1].parameters())
    assert_partition(m, gs); assert_order(m, gs)
    assert len(split_n(m, 4)) == 4 and _same(split_n(m, 4)[-1], m[1].parameters())


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


# ---------------------------------------------------------------- random module trees (hypothesis)

D = 4


class Node(nn.Module):
    "A custom module running its children in order"
    # a `token` used first and a `gamma` used last, when it has them
    def __init__(self, kids, token=False, gamma=False):
        super().__init__()
        self.kids = nn.ModuleList(kids)
        if token: self.token = nn.Parameter(torch.zeros(D))
        if gamma: self.gamma = nn.Parameter(torch.ones(D))

    def forward(self, x):
        if hasattr(self, 'token'): x = x + self.token
        for k in self.kids: x = k(x)
        return x * self.gamma if hasattr(self, 'gamma') else x


def _tree(draw, depth, shared):
    leaf = st.sampled_from(['linear', 'norm', 'relu', 'shared'] if shared else ['linear', 'norm', 'relu'])
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        kind = draw(leaf)
        if kind == 'shared': return shared[draw(st.integers(0, len(shared) - 1))]
        return {'linear': lambda: nn.Linear(D, D), 'norm': lambda: nn.LayerNorm(D), 'relu': nn.ReLU}[kind]()
    kids = [_tree(draw, depth - 1, shared) for _ in range(draw(st.integers(1, 4)))]
    kind = draw(st.sampled_from(['seq', 'node', 'node']))
    if kind == 'seq': return nn.Sequential(*kids)
    return Node(kids, draw(st.booleans()), draw(st.booleans()))


@st.composite
def trees(draw):
    shared = [nn.Linear(D, D)] if draw(st.booleans()) else []
    root = Node([_tree(draw, 3, shared) for _ in range(draw(st.integers(1, 5)))],
                draw(st.booleans()), draw(st.booleans()))
    if draw(st.booleans()): root.kids.append(nn.Linear(D, D))  # a classifier
    if not any(True for _ in root.parameters()): root.kids.append(nn.Linear(D, D))
    for p in root.parameters():
        if draw(st.integers(0, 4)) == 0: p.requires_grad_(False)
    return root


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), st.integers(1, 6))
def test_random_trees_partition_and_order(m, n):
    order = first_use_order(m, (2, D))
    for gs in (split_stages(m), split_n(m, n) if n > 1 else split_stages(m)):
        assert_partition(m, gs)
        assert order_violations(m, gs, order) == []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        gs = split_n(m, n)
    assert_partition(m, gs)
    assert len(gs) <= n and order_violations(m, gs, order) == []


# ---------------------------------------------------------------- a fixed registry sample

def _sample() -> list[str]:
    "One timm model per family (its shortest name), and every torchvision classifier"
    import timm, torchvision
    fams = [f'timm:{min(timm.list_models(module=mod), key=lambda n: (len(n), n))}'
            for mod in timm.list_modules() if timm.list_models(module=mod)]
    return fams + [f'torchvision:{n}' for n in torchvision.models.list_models(module=torchvision.models)]


@functools.lru_cache(maxsize=None)
def _built(name: str) -> nn.Module:
    "A registry model on meta, built once per test session (the sample test and the golden pin share it)"
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        m = resolve(name)
    return m if all(p.is_meta for p in m.parameters()) else m.to('meta')


def _starts(m, groups) -> str:
    "Where each group starts: the module holding its first parameter"
    return ' '.join(n[0].rpartition('.')[0] or n[0] for n in group_names(m, groups))


@functools.lru_cache(maxsize=None)
def _splits(name: str):
    "The plan of a sample model (one forward pass) and its two splits"
    # shared by the golden pin and the sample test
    m = _built(name)
    p = plan(m)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return p, split_stages(p), split_n(p, 4)


def test_registry_golden(golden):
    "One line per sample model: strategy, where each split_stages group and each split_n(m, 4) group starts"
    lines = []
    for name in _sample():
        p, gs, g4 = _splits(name)
        lines.append(f'{name} [{p.strategy}]\n  stages: {_starts(p.model, gs)}\n  n4: {_starts(p.model, g4)}')
    golden('registry_splits', '\n'.join(lines))


@pytest.mark.parametrize('name', _sample())
def test_registry_sample(name):
    "Partition, head last, forward order (checked by an independent plain meta pass) and norms with layers"
    from fast_impl.split.check import norm_splits
    p, gs, g4 = _splits(name)
    m = p.model
    assert_partition(m, gs); assert_partition(m, g4)
    assert len(gs) >= 2 and 2 <= len(g4) <= 4
    assert _same(g4[-1], gs[-1]) or not p.head  # the head is the last group of both
    assert norm_splits(p, group_names(m, gs)) == [] and norm_splits(p, group_names(m, g4)) == []
    try: order = first_use_order(m)
    except Exception as e: pytest.skip(f'forward pass on meta fails: {type(e).__name__}')
    assert order_violations(m, gs, order) == [] and order_violations(m, g4, order) == []


def test_group_table_with_learning_rates():
    import torchvision
    from fast_impl.split import group_table, split_stages
    m = torchvision.models.resnet18()
    gs = split_stages(m)
    lrs = [1e-5 * 10 ** (2 * i / (len(gs) - 1)) for i in range(len(gs))]
    t = group_table(m, gs, lrs=lrs)
    assert t.to_df().lr.tolist() == lrs
    head_row = str(t).splitlines()[-3]
    assert head_row.split('|')[2].strip() == 'fc' and head_row.split('|')[-2].strip() == '0.001'
    assert 'lr' not in group_table(m, gs).to_df().columns
    with pytest.raises(ValueError, match='lrs has 2 learning rates for 6 groups'):
        group_table(m, gs, lrs=[1, 2])


@pytest.mark.parametrize('flags', list(__import__('itertools').product([False, True], repeat=4)))
def test_tree_found_by_hypothesis_in_ci(flags):
    "A random tree on which an earlier split_stages put a LayerNorm's group before the Linear that runs first"
    t1, g1, t2, g2 = flags
    inner = nn.Sequential(nn.Sequential(nn.Linear(D, D)), nn.Linear(D, D),
                          nn.Sequential(nn.LayerNorm(D), nn.ReLU()))
    m = Node([nn.Sequential(nn.Linear(D, D)), Node([inner, nn.ReLU(), nn.Sequential(nn.ReLU())], t2, g2)],
             t1, g1)
    order = first_use_order(m, (2, D))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for gs in (split_stages(m), split_n(m, 2), split_n(m, 3)):
            assert_partition(m, gs)
            assert order_violations(m, gs, order) == []


def test_functions_taking_groups_need_the_module_they_came_from():
    from fast_impl.split import group_names
    m = resolve('torchvision:resnet18')
    gs = split_stages(m)
    for f in (group_table, check_groups, group_names, order_violations):
        with pytest.raises(TypeError, match='pass the module the groups were split from'):
            f('torchvision:resnet18', gs)
    with pytest.raises(GroupError, match=r"group 0: Conv2d \(not a Parameter\)"):
        check_groups(m, [[m.conv1]] + gs)


def test_split_at_rejects_an_ambiguous_int_list():
    m = resolve('torchvision:resnet18')
    with pytest.raises(ValueError, match=r"ambiguous: write \[\[4, 6\]\] for one cut"
                                         r".*or \[\[4\], \[6\]\] for 2 cuts"):
        split_at(m, [4, 6])
    assert len(split_at(m, [[4], [6]])) == 3


def test_order_check_restores_every_modules_mode():
    m = nn.Sequential(nn.Linear(D, D), nn.BatchNorm1d(D), nn.Linear(D, D)).train()
    m[1].eval()
    first_use_order(m, (2, D))
    assert [x.training for x in m.modules()] == [True, True, False, True]


def test_strategy_that_does_not_apply_says_so():
    "A strategy asked for by name that does not apply is told apart from a model without parameters"
    from fast_impl.split import StrategyError
    from fast_impl.split.plan import STRATEGIES
    m = resolve('fastai:xresnet18')
    with pytest.raises(StrategyError,
                       match="strategy 'timm' does not apply to XResNet; valid: hf, timm, generic"):
        plan(m, strategy='timm')
    with pytest.raises(ValueError, match="unknown split strategy 'nope'; valid: hf, timm, generic"):
        plan(m, strategy='nope')
    with pytest.raises(ValueError, match='has no parameters to split'): plan(nn.ReLU())
    with pytest.raises(ValueError, match="split strategy 'timm' is already registered"):
        STRATEGIES.register('timm')(print)
    assert plan(m, strategy='generic').strategy == 'generic'


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
    assert _same(g3[0], [*m.stem.parameters(), *m.stage1.parameters()]) or _has(g3[0], m.stem[0].weight)
    assert _same(g3[-1], m.head.parameters())
    assert _same(ga[0], [*m.stem.parameters(), *m.stage1.parameters()]) and _same(ga[-1], m.head.parameters())
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
    assert _same(gs[-1], m.head.parameters()) and _same(g4[-1], m.head.parameters())
    assert len(gs) == 6 and _same(gs[-2], m.backbone.layer4.parameters())
    for g in (gs, g4): assert_partition(m, g); assert_order(m, g)


def test_two_heads_are_one_head_group():
    "Rule 2: both heads on the same features are the head, however they are named and registered"
    m = TwoHeads()
    gs = split_stages(m)
    assert _same(gs[-1], [*m.boxes.parameters(), *m.classes.parameters()])
    assert _same(gs[0], [*m.backbone.conv1.parameters(), *m.backbone.bn1.parameters()])
    assert_partition(m, gs); assert_order(m, gs)


def test_head_argument_for_what_no_rule_sees():
    "`head=` puts named modules (names or index paths) in the head group of every split and splitter"
    m = resolve('torchvision:resnet18')
    want = [*m.layer4.parameters(), *m.fc.parameters()]
    for gs in (split_stages(m, head='layer4'), split_n(m, 3, head=['layer4', 'fc']),
               split_at(m, 'layer2', head=[[7]]), splitter('stages', head='layer4')(m),
               n_splitter(3, head='layer4')(m), stage_splitter(head=[7])(m)):
        assert _same(gs[-1], want), [len(g) for g in gs]
        assert_partition(m, gs)
    assert len(split_at(m, 'layer2', head='layer4')) == 3
    # the downsample norm leading stages.3 stays with it, though rule 5 would move it
    c = resolve('convnext_atto')
    assert _same(split_stages(c, head='stages.3')[-1], [*c.stages[3].parameters(), *c.head.parameters()])
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
    assert _same(gs[0], [m.cls_token, m.pos_embed, *m.patch.parameters()]) and len(gs) == 8
    assert _same(gs[-1], m.head.parameters())
    assert _has(gs[-2], m.norm.weight)  # the final norm runs on the tokens
    assert_partition(m, gs); assert_order(m, gs, (1, 3, 32, 32))


def test_late_class_token_stays_where_it_is_used():
    "Rule 4's other half: CaiT's class token enters only at the class-attention blocks and stays there"
    m = resolve('cait_xxs24_224')
    gs = split_stages(m)
    first = next(i for i, g in enumerate(gs) if _has(g, m.blocks_token_only[0].attn.q.weight))
    assert _has(gs[first], m.cls_token) and not _has(gs[0], m.cls_token)


@pytest.mark.parametrize('name', ['mobilenetv4_conv_small', 'mobilenetv4_hybrid_medium',
                                  'mobilenetv3_small_050'])
def test_norm_stays_with_its_layer(name):
    "Rule 3: `conv_head` and `norm_head` (run on pooled features) are in one group, the head, in every split"
    from fast_impl.split.check import norm_splits
    m = resolve(name)
    p = plan(m)
    for gs in (split_stages(p), split_n(p, 4), split_n(p, 6)):
        assert norm_splits(p, group_names(m, gs)) == []
        assert _has(gs[-1], m.conv_head.weight) and _has(gs[-1], m.classifier.weight)
        if hasattr(m, 'norm_head') and any(True for _ in m.norm_head.parameters()):
            assert _has(gs[-1], m.norm_head.weight)


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
    assert _has(gs[-1], w) == head and _has(gs[-1 if head else -2], w)


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
    m = _built(name)
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
