"Issue 12: param_groups for any torch optimizer, per-block groups, timm agreement, GroupTracker (no fastai)."
from __future__ import annotations

import math, subprocess, sys, warnings

import numpy as np
import pytest
import torch
from torch import nn

from fast_impl import param_groups, split_blocks, GroupTracker
from fast_impl.optim import no_decay_params
from fast_impl.archs import resolve
from fast_impl.split import named_groups, split_stages


def _names(model, ps):
    own = {id(p): n for n, p in model.named_parameters()}
    return [own[id(p)] for p in ps]


def _partition(model, groups):
    "Every parameter in exactly one optimizer group"
    ids = [id(p) for g in groups for p in g['params']]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_param_groups_stages_rates_names_and_weight_decay():
    m = resolve('torchvision:resnet18')  # meta: for inspection
    gs = param_groups(m, 1e-3, wd=0.05)
    _partition(m, gs)
    names = list(dict.fromkeys(g['name'] for g in gs))
    assert names == ['stem', 'stage 1', 'stage 2', 'stage 3', 'stage 4', 'head']
    rates = [next(g['lr'] for g in gs if g['name'] == n) for n in names]
    assert np.allclose(rates, np.geomspace(1e-4, 1e-3, 6))  # slice(lr/10, lr) as fastai spreads it
    assert all(math.isclose(g['lr_scale'], g['lr'] / 1e-3) for g in gs)
    no_wd = {id(p) for p in no_decay_params(m)}
    for g in gs:  # each layer group: weights with decay, then norms and biases without
        assert g['weight_decay'] == (0.0 if id(g['params'][0]) in no_wd else 0.05)
        assert all((id(p) in no_wd) == (g['weight_decay'] == 0) for p in g['params'])
    assert _names(m, gs[0]['params']) == ['conv1.weight']
    assert _names(m, gs[1]['params']) == ['bn1.weight', 'bn1.bias']
    assert [g['group'] for g in gs] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # wd=0: one optimizer group per layer group; the split is the one split_stages makes
    plain = param_groups(m, 1e-3)
    assert [g['params'] for g in plain] == split_stages(m) and all(g['weight_decay'] == 0 for g in plain)


def test_param_groups_layer_decay_and_other_groupings():
    m = resolve('torchvision:resnet18')
    gs = param_groups(m, 1e-2, groups=3, decay=0.5)
    assert [g['lr'] for g in gs] == [2.5e-3, 5e-3, 1e-2]
    assert [g['name'] for g in gs] == ['group 1', 'group 2', 'head']
    gs = param_groups(m, 1e-2, groups=['layer3'], decay=0.5)
    assert [g['lr'] for g in gs] == [5e-3, 1e-2] and _names(m, gs[1]['params'])[0] == 'layer3.0.conv1.weight'
    fn = lambda model: [list(model.layer4.parameters()),
                        [p for n, p in model.named_parameters() if 'layer4' not in n]]
    gs = param_groups(m, 1e-2, groups=fn, decay=1.0)
    assert [g['lr'] for g in gs] == [1e-2, 1e-2] and [g['name'] for g in gs] == ['group 1', 'group 2']
    gs = param_groups(m, 1e-2, groups='stages', head='layer4')  # head= joins layer4 to the head group
    assert gs[-1]['name'] == 'head' and _names(m, gs[-1]['params'])[0] == 'layer4.0.conv1.weight'


def test_blocks_torchvision_vit_embeddings_blocks_final_norm_with_head():
    m = resolve('torchvision:vit_b_16')
    named = named_groups(m, 'blocks')
    assert len(named) == 14  # embeddings, 12 encoder layers, final norm + head
    assert [n for n, _ in named] == ['stem'] + [f'block {i}' for i in range(1, 13)] + ['head']
    assert sorted(_names(m, named[0][1])) == sorted(['class_token', 'conv_proj.weight', 'conv_proj.bias',
                                                     'encoder.pos_embedding'])
    assert _names(m, named[-1][1]) == ['encoder.ln.weight', 'encoder.ln.bias', 'heads.head.weight',
                                       'heads.head.bias']
    assert all(n.startswith(f'encoder.layers.encoder_layer_{i}.') for i in range(12)
               for n in _names(m, named[i + 1][1]))
    gs = param_groups(m, 1e-3, 'blocks', decay=0.65)
    assert np.allclose([g['lr'] for g in gs], [1e-3 * 0.65 ** (13 - i) for i in range(14)])


def test_blocks_on_a_users_model_and_a_fastai_model():
    m = resolve('fastai:xresnet18')
    named = named_groups(m, 'blocks')
    assert named[0][0] == 'stem' and named[-1][0] == 'head' and len(named) == 10  # stem, 8 res blocks, head
    assert _names(m, named[-1][1]) == ['11.weight', '11.bias']
    assert split_blocks(m) == [g for _, g in named]


@pytest.mark.parametrize('arch', ['vit_tiny_patch16_224', 'convnext_nano', 'resnet18',
                                  'swin_tiny_patch4_window7_224', 'efficientnet_b0',
                                  'deit_tiny_distilled_patch16_224'])
def test_blocks_match_timm_layer_decay(arch):
    "Every parameter gets the LR scale and weight decay of timm's own param_groups_layer_decay"
    from timm.optim import param_groups_layer_decay
    m = resolve(arch)
    names = {id(p): n for n, p in m.named_parameters()}
    theirs = {names[id(p)]: (g['lr_scale'], g['weight_decay'])
              for g in param_groups_layer_decay(m, 0.05, getattr(m, 'no_weight_decay', set)(),
                                                layer_decay=0.7) for p in g['params']}
    ours = {names[id(p)]: (g['lr_scale'], g['weight_decay'])
            for g in param_groups(m, 1.0, 'blocks', decay=0.7, wd=0.05) for p in g['params']}
    assert ours.keys() == theirs.keys()
    bad = [n for n in ours if not math.isclose(ours[n][0], theirs[n][0]) or ours[n][1] != theirs[n][1]]
    assert not bad, bad[:5]


def test_no_decay_follows_every_no_weight_decay_list_with_wildcards():
    "XCiT: the root lists 'pos_embed.*' (a wildcard), each attention block lists its own 'temperature'"
    from timm.optim import param_groups_layer_decay
    m = resolve('xcit_nano_12_p16_224')
    names = {id(p): n for n, p in m.named_parameters()}
    wd = {names[id(p)]: g['weight_decay']
          for g in param_groups(m, 1.0, 'blocks', decay=0.7, wd=0.05) for p in g['params']}
    timm_wd = {names[id(p)]: g['weight_decay'] for g in param_groups_layer_decay(m, 0.05, m.no_weight_decay())
               for p in g['params']}
    assert wd['pos_embed.token_projection.weight'] == 0 == timm_wd['pos_embed.token_projection.weight']
    # timm's optimizer factory reads the root's list only; the blocks' own lists say no decay for temperature
    assert {n for n in wd if wd[n] != timm_wd[n]} == {n for n in wd if n.endswith('attn.temperature')}
    assert all(wd[n] == 0 for n in wd if n.endswith('attn.temperature'))


def test_blocks_timm_with_a_new_head_and_headless():
    m = resolve('resnet18', num_classes=0)
    named = named_groups(m, 'blocks')
    assert named[-1][0] == 'block 8' and len(named) == 9  # no classifier: no head group
    m.fc = nn.Sequential(nn.Linear(512, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 3)).to('meta')
    named = named_groups(m, 'blocks')
    assert named[-1][0] == 'head' and _names(m, named[-1][1])[0] == 'fc.0.weight' and len(named) == 10


def test_blocks_of_a_users_wrapper_around_a_timm_backbone():
    "timm's blocks inside a user's model: the wrapper's layers before them join the stem, later ones the head"
    import timm

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = nn.Conv2d(1, 3, 1)  # grey images in
            # registered before the body
            self.head = nn.Sequential(nn.Linear(640, 64), nn.ReLU(), nn.Linear(64, 2))
            self.backbone = timm.create_model('convnext_nano', num_classes=0)
        def forward(self, x): return self.head(self.backbone(self.pre(x)))
    with torch.device('meta'): net = Net()
    named = named_groups(net, 'blocks')
    alone = named_groups(timm.create_model('convnext_nano', num_classes=0).to('meta'), 'blocks')
    assert len(named) == len(alone) + 1  # timm's blocks, and a head
    assert _names(net, named[0][1])[:3] == ['pre.weight', 'pre.bias', 'backbone.stem.0.weight']
    assert named[-1][0] == 'head'
    assert _names(net, named[-1][1]) == ['head.0.weight', 'head.0.bias', 'head.2.weight', 'head.2.bias']
    # LeViT's classifier is two heads (head, head_dist): both in the head group
    levit = resolve('levit_128')
    last = named_groups(levit, 'blocks')[-1]
    assert last[0] == 'head' and {n.split('.')[0] for n in _names(levit, last[1])} == {'head', 'head_dist'}


def test_wrapped_models_give_the_same_groups():
    m = resolve('torchvision:resnet18')
    want = [[id(p) for p in g['params']] for g in param_groups(m, 1e-3, wd=0.1)]
    for wrapped in (nn.DataParallel(m), torch.compile(m)):
        assert [[id(p) for p in g['params']] for g in param_groups(wrapped, 1e-3, wd=0.1)] == want


def test_param_groups_drive_a_real_optimizer_and_the_tracker():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    lr = 0.1
    opt = torch.optim.SGD(param_groups(m, lr, groups=3, decay=0.5), lr=1.0)
    assert [g['lr'] for g in opt.param_groups] == [0.025, 0.05, 0.1]
    tr = GroupTracker(opt)
    for _ in range(2):
        opt.zero_grad()
        m(torch.rand(2, 3, 8, 8)).sum().backward()
        grads = [torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in g['params']])).item()
                 for g in opt.param_groups]
        ws = [torch.linalg.vector_norm(torch.cat([p.flatten() for p in g['params']])).item()
              for g in opt.param_groups]
        with tr.step(): opt.step()
    df = tr.df
    assert list(df.columns) == ['step', 'group', 'name', 'lr', 'grad_norm', 'update_ratio']
    assert len(df) == 6 and df.step.tolist() == [0, 0, 0, 1, 1, 1]
    last = df[df.step == 1]
    assert np.allclose(last.grad_norm, grads, rtol=1e-5)
    # plain SGD: the update is lr * grad, so the ratio is lr * ||g|| / ||w||
    assert np.allclose(last.update_ratio, [g['lr'] * gn / w for g, gn, w in zip(opt.param_groups, grads, ws)],
                       rtol=1e-4)
    fig = tr.plot()
    assert len(fig.axes) == 3 and all(ax.get_yscale() == 'log' for ax in fig.axes)


def test_tracker_merges_weight_decay_halves_and_subsamples():
    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    opt = torch.optim.AdamW(param_groups(m, 1e-2, groups=2, wd=0.1))
    assert len(opt.param_groups) == 4  # 2 layer groups x (decay, no decay)
    tr = GroupTracker(opt, every=2)
    for _ in range(4):
        opt.zero_grad(); m(torch.rand(3, 4)).sum().backward()
        with tr.step(): opt.step()
    df = tr.df
    assert df.step.tolist() == [0, 0, 2, 2] and df.name.tolist() == ['group 1', 'head'] * 2


@pytest.mark.parametrize('kwargs, match', [
    (dict(groups='stage'), r"did you mean 'stages'"),
    (dict(groups='blokcs'), r"did you mean 'blocks'"),
    (dict(groups='nonexistent'), r"groups='nonexistent' does not split ResNet.*'stages', 'blocks'"),
    (dict(groups=0), r"groups=0 does not split"),
    (dict(groups=2.5), r"groups must be 'stages', 'blocks'"),
    (dict(lr=0), r"lr must be a positive, finite number"),
    (dict(lr=-1e-3), r"lr must be a positive, finite number"),
    (dict(lr=float('nan')), r"lr must be a positive, finite number"),
    (dict(lr=float('inf')), r"lr must be a positive, finite number"),
    (dict(decay=0), r"decay must be in \(0, 1\]"),
    (dict(decay=1.5), r"decay must be in \(0, 1\]"),
    (dict(decay=True), r"decay must be in \(0, 1\]"),
    (dict(wd=-0.1), r"wd must be a finite weight decay >= 0"),
])
def test_param_groups_bad_input(kwargs, match):
    m = resolve('torchvision:resnet18')
    args = dict(lr=1e-3) | kwargs
    lr = args.pop('lr')
    with pytest.raises(ValueError, match=match): param_groups(m, lr, **args)


def test_param_groups_bad_head_lists_the_children():
    with pytest.raises(KeyError, match="no child named 'nohead'.*valid children of ResNet.*layer4"):
        param_groups(resolve('torchvision:resnet18'), 1e-3, head='nohead')


def test_param_groups_no_parameters():
    with pytest.raises(ValueError, match='has no parameters'): param_groups(nn.ReLU(), 1e-3)


def test_optim_imports_no_fastai():
    code = ("import sys, fast_impl.optim, fast_impl.split; from fast_impl import param_groups; "
            "assert 'fastai' not in sys.modules, 'fastai imported'")
    subprocess.run([sys.executable, '-c', code], check=True)


def _three_groups():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    return m, torch.optim.AdamW(param_groups(m, 1e-2, groups=3, decay=0.5, wd=0.1))


def _run(m, opt, tr, sched, steps=3):
    for _ in range(steps):
        opt.zero_grad(); m(torch.rand(3, 4)).sum().backward()
        with tr.step(): opt.step()
        sched.step()


def test_flattened_rates_warn_once_naming_the_fix():
    from fast_impl.optim import FlatRatesWarning, flattened_rates
    m, opt = _three_groups()
    assert flattened_rates(opt.param_groups) is None  # param_groups' own rates: 2.5e-3, 5e-3, 1e-2
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)  # what most people write
    with pytest.warns(FlatRatesWarning) as rec: _run(m, opt, GroupTracker(opt), sched)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "3 layer groups" in msg and "max_lr=[g['lr'] for g in opt.param_groups]" in msg
    m, opt = _three_groups()  # the fix: one rate per group, ratios kept at every step
    lrs = [g['lr'] for g in opt.param_groups]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lrs, total_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        tr = GroupTracker(opt)
        _run(m, opt, tr, sched)
    for _, d in tr.df.groupby('step'): assert np.allclose(d.lr.to_numpy() / d.lr.iloc[-1], [0.25, 0.5, 1])


def test_flattened_rates_ignores_equal_scales_zero_rates_and_plain_groups():
    from fast_impl.optim import flattened_rates
    g = lambda lr, s, i: dict(params=[], lr=lr, lr_scale=s, group=i)
    assert flattened_rates([g(1e-3, 1, 0), g(1e-3, 1, 1)]) is None  # decay=1: equal by design
    assert flattened_rates([g(0., .5, 0), g(0., 1, 1)]) is None  # warm-up's first step: every rate 0
    assert flattened_rates([dict(params=[], lr=1e-3), dict(params=[], lr=1e-3)]) is None  # not param_groups'
    assert '2 layer groups' in flattened_rates([g(1e-3, .5, 0), g(1e-3, .5, 0), g(1e-3, 1, 1)])


def test_plot_colours_thirty_groups_by_depth():
    "30 groups: 30 distinct colours, darkest at the stem, lighter at every step to the head; a colorbar"
    import matplotlib; matplotlib.use('Agg')
    import pandas as pd
    from matplotlib.colors import to_rgb
    from fast_impl.optim import plot_group_stats
    names = ['stem'] + [f'block {i}' for i in range(1, 29)] + ['head']
    df = pd.DataFrame([(s, i, n, 1e-3 * (i + 1), 1., .01) for s in range(3) for i, n in enumerate(names)],
                      columns=GroupTracker.columns)
    fig = plot_group_stats(df)
    lines = fig.axes[0].lines
    assert [ln.get_label() for ln in lines] == names
    rgb = [to_rgb(ln.get_color()) for ln in lines]
    assert len(set(rgb)) == 30
    lum = [0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b in rgb]
    assert all(a < b for a, b in zip(lum, lum[1:]))  # viridis: lightness rises monotonically stem -> head
    bar = fig.axes[3]  # the colorbar, outside the three plots
    assert bar.get_position().x0 > fig.axes[2].get_position().x1
    labels = [t.get_text() for t in bar.get_yticklabels()]
    assert labels[0] == 'stem' and labels[-1] == 'head'
    small = plot_group_stats(df[df.group < 4])  # few groups: a legend outside the axes, no colorbar
    assert len(small.axes) == 3 and [t.get_text() for t in small.legends[0].get_texts()] == names[:4]


def test_group_freezer_plain_loop_phases_and_frozen_norms():
    "GroupFreezer in a plain loop: head first, one more group per phase; frozen groups and norms unchanged"
    from fast_impl.optim import GroupFreezer
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                      nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(param_groups(m, 1e-2, wd=0.1))
    fr = GroupFreezer(opt, epochs_per_phase=2, model=m)
    assert fr.names == ['stem', 'stage 1', 'head'] and fr.epochs_needed == 6
    assert [fr.frozen_at(e) for e in range(7)] == [2, 2, 1, 1, 0, 0, 0]
    for epoch in range(6):
        fr.set(epoch)
        before = [[p.detach().clone() for p in ps] for ps in fr.groups]
        stats = m[1].running_mean.clone()
        m.train()
        for _ in range(2):
            opt.zero_grad(); m(torch.rand(4, 3, 8, 8)).sum().backward(); opt.step()
        moved = [not all(torch.equal(a, p) for a, p in zip(b, ps)) for b, ps in zip(before, fr.groups)]
        assert moved == [i >= fr.frozen_at(epoch) for i in range(3)], epoch
        assert torch.equal(stats, m[1].running_mean) == (epoch < 4) and m[1].training
    fr.restore()
    assert all(p.requires_grad for p in m.parameters()) and not m[1]._forward_pre_hooks
    with pytest.raises(ValueError, match=r'AdamW\(param_groups\(model, lr\)\)'):
        GroupFreezer(torch.optim.SGD(m.parameters(), lr=0.1))
