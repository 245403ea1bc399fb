"Layer-group splitters on random module trees (hypothesis) and a fixed registry sample (a golden file)."
from __future__ import annotations

import functools, warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from fast_impl.archs import resolve
from fast_impl.split import (GroupError, check_groups, first_use_order, group_names, group_table,
                             order_violations, plan, split_at, split_n, split_stages)
from test_split import assert_partition, same_tensors


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
def built_model(name: str) -> nn.Module:
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
    m = built_model(name)
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
    assert same_tensors(g4[-1], gs[-1]) or not p.head  # the head is the last group of both
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
