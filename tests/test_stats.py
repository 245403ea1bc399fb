"Issue 4: layer_summary and compare_archs (seed 001's rows verbatim, seed 000/001 comparisons, invariants)."
import copy, warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fast_impl import compare_archs, layer_summary
from fast_impl.summary import Comparison, LayerSummary
from fast_impl.models import (AsymInception, Inception, InceptionModule, NewInception, Plain18Layer,
                              Plain28Layer, ResNet18, SimpleCNN)
from fast_impl.archs import resolve
from fast_impl.summary import ForwardError

SMALL = (1, 3, 32, 32)
HEADER = 'Layer (type (var_name))                  Kernel Shape   Output Shape   Param #        Mult-Adds'

# Row lines printed in seed 001, copied verbatim (its Inception tables are cut off after these lines)
SEED_001 = {
    'simplecnn3': (lambda: SimpleCNN(3), """\
SimpleCNN (SimpleCNN)                    --             [1, 32, 16, 16] --             --
├─Conv2d (conv1)                         [3, 3]         [1, 32, 32, 32] 896            917,504
├─MaxPool2d (maxpool)                    2              [1, 32, 16, 16] --             --
Total params: 896
Trainable params: 896
Non-trainable params: 0
Total mult-adds (M): 0.92"""),
    'simplecnn5': (lambda: SimpleCNN(5), """\
SimpleCNN (SimpleCNN)                    --             [1, 32, 16, 16] --             --
├─Conv2d (conv1)                         [5, 5]         [1, 32, 32, 32] 2,432          2,490,368
├─MaxPool2d (maxpool)                    2              [1, 32, 16, 16] --             --
Total params: 2,432
Trainable params: 2,432
Non-trainable params: 0
Total mult-adds (M): 2.49"""),
    'inception': (lambda: Inception(3, 32), """\
Inception (Inception)                    --             [1, 96, 32, 32] --             --
├─Conv2d (branch1)                       [1, 1]         [1, 32, 32, 32] 128            131,072
├─Sequential (branch2)                   --             [1, 32, 32, 32] --             --
│    └─Conv2d (0)                        [1, 1]         [1, 32, 32, 32] 128            131,072
│    └─ReLU (1)                          --             [1, 32, 32, 32] --             --
│    └─Conv2d (2)                        [3, 3]         [1, 32, 32, 32] 9,248          9,469,952
│    └─ReLU (3)                          --             [1, 32, 32, 32] --             --
├─Sequential (branch3)                   --             [1, 32, 32, 32] --             --
│    └─Conv2d (0)                        [1, 1]         [1, 32, 32, 32] 128            131,072"""),
    'newinception': (lambda: NewInception(3, 32), """\
NewInception (NewInception)              --             [1, 96, 32, 32] --             --
├─Conv2d (branch1)                       [1, 1]         [1, 32, 32, 32] 128            131,072
├─Sequential (branch2)                   --             [1, 32, 32, 32] --             --
│    └─Conv2d (0)                        [1, 1]         [1, 32, 32, 32] 128            131,072
│    └─ReLU (1)                          --             [1, 32, 32, 32] --             --
│    └─Conv2d (2)                        [3, 3]         [1, 32, 32, 32] 9,248          9,469,952
│    └─ReLU (3)                          --             [1, 32, 32, 32] --             --
├─Sequential (branch3)                   --             [1, 32, 32, 32] --             --
│    └─Conv2d (0)                        [1, 1]         [1, 32, 32, 32] 128            131,072"""),
    'asyminception': (lambda: AsymInception(3, 32), """\
AsymInception (AsymInception)            --             [1, 96, 32, 32] --             --
├─Conv2d (branch1)                       [1, 1]         [1, 32, 32, 32] 128            131,072
├─Sequential (branch2)                   --             [1, 32, 32, 32] --             --
│    └─Conv2d (0)                        [1, 1]         [1, 32, 32, 32] 128            131,072
│    └─ReLU (1)                          --             [1, 32, 32, 32] --             --
│    └─Conv2d (2)                        [3, 1]         [1, 32, 32, 32] 3,104          3,178,496
│    └─ReLU (3)                          --             [1, 32, 32, 32] --             --
│    └─Conv2d (4)                        [1, 3]         [1, 32, 32, 32] 3,104          3,178,496
│    └─ReLU (5)                          --             [1, 32, 32, 32] --             --"""),
}


def seed_summary(key: str) -> LayerSummary:
    return layer_summary(SEED_001[key][0](), input_size=SMALL, depth=2, col_width=14)  # as in the seed


@pytest.mark.parametrize('key', list(SEED_001))
def test_seed_001_lines_verbatim(key):
    text = str(seed_summary(key))
    lines = text.splitlines()
    assert lines[0] == HEADER
    expected = SEED_001[key][1].splitlines()
    for l in expected: assert l in lines, f'seed line missing: {l!r}'
    assert lines[1:1 + len(expected)] == expected  # in the seed's order, right under the header


@pytest.mark.parametrize('key', list(SEED_001))
def test_golden_text(key, golden):
    golden(f'layers_{key}', str(seed_summary(key)))


def test_simplecnn_figures():
    for fs, macs, params in [(3, 917_504, 896), (5, 2_490_368, 2_432)]:
        s = layer_summary(SimpleCNN(fs), input_size=SMALL, depth=2)
        conv = next(r for r in s.rows if r.name == 'conv1')
        assert (conv.macs, conv.params, conv.kernel) == (macs, params, (fs, fs))
        assert (s.total_mult_adds, s.total_params, s.non_trainable_params) == (macs, params, 0)
        assert next(r for r in s.rows if r.name == 'maxpool').kernel == 2


@pytest.mark.parametrize('model,conv_macs', [
    (Inception(3, 32), {'branch1': 131_072, 'branch2.0': 131_072, 'branch2.2': 9_469_952,
                        'branch3.0': 131_072, 'branch3.2': 26_247_168}),
    (AsymInception(3, 32), {'branch2.2': 3_178_496, 'branch2.4': 3_178_496, 'branch3.8': 3_178_496})])
def test_inception_conv_rows(model, conv_macs):
    rows = {r.name: r for r in layer_summary(model, input_size=SMALL, depth=2).rows}
    for name, macs in conv_macs.items(): assert rows[name].macs == macs, name


def test_footer_states_convention_and_device():
    text = str(seed_summary('simplecnn3'))
    assert 'one per multiply-accumulate of conv, linear, matmul and attention' in text
    assert 'one per bias element' in text
    assert 'Forward pass on: meta' in text


# ---------------------------------------------------------------- invariants: column sums equal totals

def flop_reference(model: nn.Module, x: torch.Tensor) -> int:
    "FlopCounterMode / 2 plus one per bias element of conv/linear modules: counted independently of our code"
    model = copy.deepcopy(model).to('meta')
    bias = []
    hook = lambda m, i, o: bias.append(o.numel()) if getattr(m, 'bias', None) is not None else None
    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with FlopCounterMode(display=False) as f, torch.no_grad(): model.eval()(x)
    finally:
        for h in hs: h.remove()
    return f.get_total_flops() // 2 + sum(bias)


def tv(name):
    import torchvision.models
    return getattr(torchvision.models, name)


MODELS = {
    'inception': lambda: Inception(3, 32),
    'inception_module_shared_relu': lambda: InceptionModule(3, 16),
    'resnet18_seed': lambda: ResNet18(),
    'vit_tiny_timm': lambda: resolve('vit_tiny_patch16_224'),
    'mobilenet_v3_small': lambda: resolve(tv('mobilenet_v3_small')),
}


@pytest.mark.parametrize('name', list(MODELS))
@pytest.mark.parametrize('depth', [0, 1, 2, 3, None])
def test_column_sums_equal_totals(name, depth):
    model = MODELS[name]()
    size = SMALL if 'vit' not in name else (1, 3, 224, 224)
    s = layer_summary(model, input_size=size, depth=depth)
    assert sum(r.params for r in s.rows) == s.total_params == sum(p.numel() for p in model.parameters())
    assert sum(r.trainable for r in s.rows) == s.trainable_params
    assert sum(r.macs for r in s.rows) == s.total_mult_adds
    assert s.rows[0].total_macs == s.total_mult_adds and s.rows[0].total_params == s.total_params
    for r in s.rows:  # a collapsed row or a leaf shows its whole subtree
        if not r.expanded: assert (r.macs, r.params) == (r.total_macs, r.total_params)


@pytest.mark.parametrize('name', list(MODELS))
def test_total_matches_flop_counter(name):
    model = MODELS[name]()
    size = SMALL if 'vit' not in name else (1, 3, 224, 224)
    s = layer_summary(model, input_size=size)
    assert s.total_mult_adds == flop_reference(model, torch.randn(size, device='meta'))


class _Unregistered(nn.Module):
    "A conv kept in a plain list (not a submodule): it runs, but the module tree does not hold it"
    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.extra = nn.Conv2d(3, 8, 3), nn.Linear(8, 2), [nn.Conv2d(8, 8, 3)]

    def forward(self, x): return self.fc(self.extra[0](self.conv(x)).mean((2, 3)))


def test_ops_of_an_unregistered_module_count_in_its_callers_row():
    "Its mult-adds in the row of the module that called it, so the rows still sum to the total"
    s = layer_summary(_Unregistered(), input_size=(1, 3, 16, 16), depth=None)
    assert sum(r.macs for r in s.rows) == s.total_mult_adds == 43_904 + 8 * 8 * 9 * 144 + 8 * 144 + 18
    assert s.rows[0].macs == 8 * 8 * 9 * 144 + 8 * 144  # the root ran it


def test_leaf_rows_sum_to_total():
    "With every level shown, leaves hold everything when no parent has weights or ops of its own"
    s = layer_summary(Inception(3, 32), input_size=SMALL, depth=None)
    leaves = [r for r in s.rows if not r.expanded]
    assert sum(r.macs for r in leaves) == s.total_mult_adds == 36_110_336
    assert sum(r.params for r in leaves) == s.total_params == 35_264


def test_vit_root_params_and_attention_matmuls():
    "timm ViT: cls_token/pos_embed live on the root; attention matmuls run in `Attention`, a non-leaf module"
    s = layer_summary('vit_tiny_patch16_224', depth=None)
    rows = {r.name: r for r in s.rows}
    assert rows[''].params == 192 + 197 * 192  # cls_token + pos_embed, shown on the root row only
    attn = rows['blocks.0.attn']
    assert attn.expanded and attn.macs == 2 * 3 * 197 * 197 * 64  # q @ k.T and attn @ v, 3 heads of 64
    leaves = sum(r.macs for r in s.rows if not r.expanded)
    assert leaves + sum(r.macs for r in s.rows if r.expanded) == s.total_mult_adds
    assert leaves < s.total_mult_adds


def test_torchvision_vit_b_16_counts_multihead_attention():
    model = resolve(tv('vit_b_16'))
    s = layer_summary(model, depth=None)
    ref = flop_reference(model, torch.randn(1, 3, 224, 224, device='meta'))
    assert abs(s.total_mult_adds - ref) / ref < 0.005
    mha = {r.name: r for r in s.rows}['encoder.layers.encoder_layer_0.self_attention']
    n, d = 197, 768
    in_proj, out_proj, attn = n * d * 3 * d + n * 3 * d, n * d * d + n * d, 2 * 12 * n * n * 64
    assert mha.total_macs == in_proj + out_proj + attn
    assert s.total_mult_adds > 17.5e9


def test_shared_module_counted_once():
    "InceptionModule uses one ReLU in all four branches: one object, one count, three calls"
    s = layer_summary(InceptionModule(3, 16), input_size=SMALL, depth=None)
    relus = [r for r in s.rows if r.cls == 'ReLU']
    assert len(relus) == 4 and relus[0].calls == 4


def test_tied_weights_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = nn.Embedding(100, 16), nn.Linear(16, 100, bias=False)
            self.out.weight = self.emb.weight
        def forward(self, x): return self.out(self.emb(x))
    s = layer_summary(Tied(), input_data=torch.randint(0, 100, (2, 7)))
    assert s.total_params == 1600 == sum(r.params for r in s.rows)
    assert s.total_mult_adds == 2 * 7 * 16 * 100 and s.output_shapes == [[2, 7, 100]]


# ---------------------------------------------------------------- hooks, modes, errors, the user's module

class Boom(nn.Module):
    def forward(self, x): raise ValueError('boom')


def failing_model() -> nn.Module:
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), Boom()), nn.Linear(4, 2))
    m.train()
    m[0].eval()  # mixed modes must come back exactly
    return m


def modes(m): return [x.training for x in m.modules()]


def no_hooks(m): return all(not x._forward_hooks and not x._forward_pre_hooks for x in m.modules())


@pytest.mark.parametrize('device', ['meta', 'cpu'])
def test_error_names_module_and_leaves_no_hooks(device):
    m = failing_model()
    before = modes(m)
    with pytest.raises(ForwardError, match=r"module '1\.1' \(Boom\).*ValueError: boom") as e:
        layer_summary(m, input_size=SMALL, device=device)
    assert e.value.module == '1.1' and isinstance(e.value.__cause__, ValueError)
    assert no_hooks(m) and modes(m) == before


def test_in_place_run_restores_everything():
    "On the CPU a CPU module runs in place: afterwards no hooks, same modes, same weights (BN stats too)"
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Dropout(), nn.Flatten(),
                      nn.Linear(8 * 30 * 30, 2))
    m.train()
    state = copy.deepcopy(m.state_dict())
    s = layer_summary(m, input_size=SMALL, device='cpu')
    assert s.device == 'cpu' and 'Forward pass on: cpu' in str(s)
    assert no_hooks(m) and all(modes(m))
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())


def test_real_module_copied_to_meta_untouched():
    m = SimpleCNN(3)
    w = m.conv1.weight.detach().clone()
    s = layer_summary(m, input_size=SMALL)
    assert (s.device == 'meta' and not m.conv1.weight.is_meta and torch.equal(m.conv1.weight, w)
            and no_hooks(m))


def test_named_arch_holds_no_weights():
    s = layer_summary('resnet18', depth=1)
    assert s.device == 'meta' and s.total_params == 11_689_512 and s.output_shapes == [[1, 1000]]


def test_meta_fallback_to_cpu():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
        def forward(self, x):
            y = self.lin(x)
            return y[y > 0].sum() if y.sum().item() > -1e9 else y
    with pytest.warns(UserWarning, match='meta'):
        s = layer_summary(DataDependent(), input_size=(2, 4))
    assert s.device == 'cpu' and 'Forward pass on: cpu' in str(s)
    assert s.total_mult_adds == 2 * 4 * 4 + 2 * 4


def test_several_inputs_and_outputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 5), nn.Linear(4, 5)
        def forward(self, x, y=None): return self.a(x), self.b(y)
    s = layer_summary(Two(), input_size=[(2, 3), (2, 4)],
                      col_names=['input_size', 'output_size', 'mult_adds'])
    assert s.rows[0].input_shapes == [[2, 3], [2, 4]] and s.rows[0].output_shapes == [[2, 5], [2, 5]]
    assert '[2, 5], [2, 5]' in str(s) and 'Input Shape' in str(s)
    s2 = layer_summary(Two(), input_data={'x': torch.randn(2, 3), 'y': torch.randn(2, 4)})
    assert s2.total_mult_adds == s.total_mult_adds == 2 * 5 * 3 + 2 * 5 * 4 + 2 * 5 * 2


@pytest.mark.parametrize('kw,match', [
    (dict(input_size='1x3x32x32'), 'input_size must be a shape'),
    (dict(input_size=(1, 3, -2, 32)), 'input_size must be a shape'),
    (dict(depth=-1), 'depth must be an int >= 0'),
    (dict(depth=1.5), 'depth must be an int >= 0'),
    (dict(col_names=['kernel', 'params']), "col_names must be names from .*'kernel_size'"),
    (dict(device='tpu9'), "device must be a torch device such as 'meta'"),
])
def test_bad_input_errors(kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        layer_summary(SimpleCNN(3), **{'input_size': SMALL, **kw})


def test_wrong_input_shape_names_module():
    with pytest.raises(ForwardError, match=r"module 'conv1' \(Conv2d\)"):
        layer_summary(SimpleCNN(3), input_size=(1, 4, 32, 32))


def test_renderers():
    s = seed_summary('inception')
    df = s.to_df()
    assert len(df) == len(s.rows) and df.mult_adds.sum() == s.total_mult_adds
    assert ({'name', 'path', 'kernel_size', 'input_shape', 'output_shape', 'trainable_params'}
            <= set(df.columns))
    assert df.loc[df.name == 'branch2.2', 'path'].item() == [1, 2]
    html = s._repr_html_()
    assert '<table>' in html and 'padding-left:2.9em' in html and 'Total params: 35,264' in html
    assert '| branch2.2 |' in s.to_markdown() and s.to_csv().startswith('name,path')


# ---------------------------------------------------------------- compare_archs

def test_compare_inceptions_seed_001():
    c = compare_archs([Inception(3, 32), NewInception(3, 32), AsymInception(3, 32)], input_size=SMALL)
    assert isinstance(c, Comparison)
    df = c.to_df()
    assert list(df.params) == [35_264, 28_128, 19_008]
    assert [f'{v:.2%}' for v in df.params_change] == ['0.00%', '-20.24%', '-46.10%']
    assert list(df.depth) == [2, 3, 5] and list(df.weight_layers) == [5, 6, 9]
    assert df.mult_adds[0] == 36_110_336 and df.mult_adds_change[2] < -0.4
    text = str(c)
    assert '-20.24%' in text and '-46.10%' in text and 'Depth: most mult-add ops' in text


def test_compare_plain_nets_seed_000():
    """Equal parameter budget, much deeper net. Each stage keeps its parameters and its resolution, so the
    mult-adds come out equal too (bias-free convs: mult-adds = parameters x output positions)"""
    c = compare_archs({'plain18': Plain18Layer(), 'plain28': Plain28Layer()}, input_size=SMALL)
    df = c.to_df()
    assert list(df.arch) == ['plain18', 'plain28'] and list(df.params) == [685_656, 685_656]
    assert list(df.depth) == [17, 31] and list(df.weight_layers) == [17, 31]
    assert df.mult_adds[0] == df.mult_adds[1] == 33_251_328
    assert sum(df.stage_params[0]) == sum(df.stage_params[1]) == 685_656
    assert list(df.output_shape) == ['[1, 128, 4, 4]'] * 2
    sizes = [layer_summary(Plain18Layer(), input_size=SMALL).total_mult_adds,
             layer_summary(Plain28Layer(), input_size=(1, 3, 64, 64)).total_mult_adds]
    assert sizes[1] == 4 * sizes[0]


def test_compare_names_and_changes():
    c = compare_archs(['resnet18', 'resnet34', tv('vit_b_16')], input_size=(1, 3, 224, 224))
    df = c.to_df()
    assert list(df.arch) == ['resnet18', 'resnet34', 'vit_b_16']
    assert df.params_change[1] == pytest.approx(21_797_672 / 11_689_512 - 1)
    assert all(len(s) >= 2 for s in df.stage_params)
    assert list(df.depth) == [18, 34, 74]  # vit_b_16: 12 x (qkv, q@k, attn@v, out, mlp 2) + patch conv + head
    assert list(df.weight_layers) == [21, 37, 50]  # nn.MultiheadAttention's functional projections included
    assert c.to_markdown().startswith('| arch |')


@pytest.mark.parametrize('archs', [[], 'resnet18', SimpleCNN(3), 3])
def test_compare_bad_input(archs):
    with pytest.raises(TypeError, match='archs must be a non-empty list'):
        compare_archs(archs)


def test_compare_takes_its_stages_from_the_same_pass(monkeypatch):
    "compare_archs: one recorded pass per arch gives mult-adds and the split_stages groups of its stage sizes"
    import fast_impl.forward as F
    from fast_impl import split_stages
    calls, inner = [], F.record
    monkeypatch.setattr(F, 'record', lambda *a, **k: calls.append(1) or inner(*a, **k))
    monkeypatch.setattr('fast_impl.summary.compare.run', F.run)
    c = compare_archs(['resnet18', 'fast_impl:Plain18Layer'])
    assert len(calls) == 2 and {r.stages_by for r in c.records} == {'split_stages'}
    assert c.records[0].stage_params == [sum(p.numel() for p in g) for g in split_stages('resnet18')]
