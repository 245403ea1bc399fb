"""Issue 3: resolving archs, arch_summary, get_module and count_parameters.

Seed 004 and seed 000 as golden files."""
import pathlib, re, subprocess, sys, warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import fast_impl
from fast_impl import arch_summary, count_parameters, get_module
from fast_impl.archs import UnknownArchError
from fast_impl.archs import resolve
from fast_impl.models import Plain18Layer, Plain28Layer

GOLDEN = pathlib.Path(__file__).parent / 'golden'


def seed(name: str) -> str: return (GOLDEN / f'{name}.txt').read_text().rstrip('\n')


def as_seed(obj) -> str:
    "Our output, with the one allowed difference: current torch prints `bias=True` inside BatchNorm2d reprs"
    return re.sub(r'(BatchNorm2d\(.*affine=True), bias=True', r'\1', str(obj))


def xresnet18():
    from fastai.vision.models.xresnet import xresnet18
    return xresnet18


def mnasnet():
    from torchvision.models import MNASNet
    return MNASNet(1.0)


def tv(name):
    import torchvision.models
    return getattr(torchvision.models, name)


SEED_004 = [
    ('seed004_xresnet18', lambda: arch_summary(xresnet18())),
    ('seed004_xresnet18_verbose', lambda: arch_summary(xresnet18(), verbose=True)),
    ('seed004_xresnet18_4_0', lambda: get_module(xresnet18(), [4, 0])),
    ('seed004_mnasnet_0', lambda: arch_summary(mnasnet(), 0)),
    ('seed004_mnasnet_0_8', lambda: arch_summary(mnasnet(), [0, 8])),
    ('seed004_mnasnet_0_8_0', lambda: get_module(mnasnet(), [0, 8, 0])),
    ('seed004_wrn50', lambda: arch_summary(tv('wide_resnet50_2'))),
    ('seed004_wrn50_4', lambda: arch_summary(tv('wide_resnet50_2'), [4])),
    ('seed004_wrn50_layer1', lambda: arch_summary(tv('wide_resnet50_2')().layer1)),
    ('seed004_wrn50_4_0', lambda: get_module(tv('wide_resnet50_2'), [4, 0])),
    ('seed004_resnet50_4_0', lambda: get_module(tv('resnet50'), [4, 0])),
]


@pytest.mark.parametrize('name,call', SEED_004, ids=[n for n, _ in SEED_004])
def test_seed_004_transcripts(name, call):
    assert as_seed(call()) == seed(name)


@pytest.mark.parametrize('cls,name', [(Plain18Layer, 'seed000_plain18'), (Plain28Layer, 'seed000_plain28')])
def test_count_parameters_prints_seed_000(cls, name, capsys):
    assert count_parameters(cls().network) == 685_656
    assert capsys.readouterr().out.rstrip('\n') == seed(name)


def test_count_parameters_quiet_and_by_name(capsys):
    assert count_parameters('fast_impl:Plain28Layer', show=False) == 685_656
    assert capsys.readouterr().out == ''


# ---- resolving every accepted kind of arch ----

def _no_storage(m: nn.Module) -> bool:
    return all(p.is_meta for p in m.parameters()) and all(b.is_meta for b in m.buffers())


@pytest.mark.parametrize('arch,cls', [
    ('convnext_atto', 'ConvNeXt'), ('timm:convnext_atto', 'ConvNeXt'), ('torchvision:resnet18', 'ResNet'),
    ('fastai:xresnet18', 'XResNet'), ('xresnet34', 'XResNet'), ('fast_impl:SimpleCNN', 'SimpleCNN'),
    ('Plain18Layer', 'Plain18Layer'), ('torchvision:ViT_B_16', 'VisionTransformer')])
def test_resolve_names_build_on_meta(arch, cls):
    m = resolve(arch)
    assert type(m).__name__ == cls and _no_storage(m)


def test_resolve_callables_classes_and_kwargs():
    from torchvision.models import MNASNet, resnet50
    m = resolve(resnet50, num_classes=7)
    assert m.fc.out_features == 7 and _no_storage(m)
    assert _no_storage(resolve(MNASNet, alpha=0.5))
    assert _no_storage(resolve(xresnet18(), n_out=3)) and resolve(xresnet18(), n_out=3)[-1].out_features == 3
    assert resolve('timm:resnet18', num_classes=3).fc.out_features == 3
    real = nn.Linear(2, 2)
    assert resolve(real) is real


def test_resolve_on_cpu_when_asked():
    m = resolve('fast_impl:SimpleCNN', device='cpu', filter_size=5)
    assert not any(p.is_meta for p in m.parameters()) and m.conv1.kernel_size == (5, 5)


def test_builder_that_cannot_run_on_meta_falls_back_to_cpu():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            n = int(torch.tensor(3).item())  # needs real data
            self.lin = nn.Linear(n, 2)
    with pytest.warns(UserWarning, match='cannot be built on the meta device.*CPU'):
        m = resolve(DataDependent)
    assert not m.lin.weight.is_meta


def test_unknown_name_lists_closest_names():
    with pytest.raises(UnknownArchError,
                       match=r"'convnxt_tiny'.*closest known names: convnext_tiny \(timm, torchvision\)"):
        resolve('convnxt_tiny')
    with pytest.raises(UnknownArchError, match=r"no torchvision model.*resnet50 \(torchvision\)"):
        resolve('torchvision:resnet5')
    with pytest.raises(UnknownArchError, match=r"unknown arch source 'tf'.*valid prefixes: fast_impl, timm"):
        resolve('tf:resnet50')


def test_bad_arch_type_and_kwargs_on_module():
    with pytest.raises(TypeError, match=r"nn.Module, a callable.*got int"): resolve(3)
    with pytest.raises(TypeError, match=r"builder arguments \['num_classes'\]"):
        resolve(nn.Linear(1, 1), num_classes=3)


def test_local_weights_file(tmp_path):
    src = fast_impl.models.SimpleCNN(3)
    torch.save({'model': src.state_dict()}, tmp_path / 'w.pth')
    m = resolve('fast_impl:SimpleCNN', pretrained=tmp_path / 'w.pth')
    assert torch.equal(m.conv1.weight, src.conv1.weight)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        resolve('fast_impl:SimpleCNN', pretrained=tmp_path / 'x')
    torch.save(nn.Linear(3, 3).state_dict(), tmp_path / 'bad.pth')
    with pytest.raises(ValueError, match="does not fit SimpleCNN"):
        resolve('fast_impl:SimpleCNN', pretrained=tmp_path / 'bad.pth')


# ---- get_module paths and errors ----

def test_get_module_paths_names_mixed_and_negative():
    import torchvision
    m = torchvision.models.resnet18()
    assert get_module(m, [4, 0]) is m.layer1[0]
    assert get_module(m, 'layer1.0.conv1') is m.layer1[0].conv1
    assert get_module(m, ['layer1', 0, 'bn1']) is m.layer1[0].bn1
    assert get_module(m, -1) is m.fc and get_module(m, [-3, -1]) is m.layer4[-1]
    assert get_module(m) is m


def test_get_module_errors_name_the_step_and_list_children():
    import torchvision
    m = torchvision.models.resnet18()
    with pytest.raises(IndexError, match=r"index 5 is out of range at layer1 \(2 children\); valid children "
                                         r"of Sequential: \[0\] \(0\) BasicBlock, \[1\] \(1\) BasicBlock"):
        get_module(m, [4, 5])
    with pytest.raises(KeyError, match=r"no child named 'conv9' at layer1.0; valid children of BasicBlock: "
                                       r"\[0\] \(conv1\) Conv2d"):
        get_module(m, 'layer1.0.conv9')
    with pytest.raises(TypeError, match=r"path steps must be ints or names, got 1.5"): get_module(m, [1.5])


# ---- arch_summary object ----

def test_arch_summary_df_html_and_params():
    s = arch_summary('torchvision:resnet18')
    df = s.to_df()
    assert list(df.columns[:7]) == ['index', 'name', 'class', 'layers', 'params', 'trainable_params', 'path']
    assert df.params.sum() == 11_689_512
    assert df.loc[df.name == 'layer1', 'path'].item() == [4]
    html = s._repr_html_()
    assert html.startswith('<table>') and 'layer4' in html and '11,689,512' not in html


def test_arch_summary_on_a_leaf_and_negative_path():
    import torchvision
    m = torchvision.models.resnet18()
    assert str(arch_summary(m, -1)) == '[0 ] (fc)  Linear           : 1   layers'
    assert str(arch_summary(m, 'layer4')) == str(arch_summary(m, [-3]))


# ---- tied weights, root-held and frozen parameters ----

class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.emb.weight
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))  # held by a non-leaf module
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_count_parameters_tied_root_frozen(capsys):
    assert count_parameters(Tied()) == 40 + 4
    out = capsys.readouterr().out
    assert 'cls_token' in out and 'out.weight' not in out and 'frozen' not in out


def test_vit_root_params_counted():
    m = resolve('vit_tiny_patch16_224')
    assert count_parameters(m, show=False) == sum(p.numel() for p in m.parameters()) == 5_717_416
    assert arch_summary(m).to_df().params.sum() + m.cls_token.numel() + m.pos_embed.numel() == 5_717_416


# ---- property: every index path listed by to_df() leads to that very module ----

@st.composite
def trees(draw, depth=0):
    kind = draw(st.sampled_from(['seq', 'list', 'dict', 'custom'] if depth < 3 else ['leaf']))
    if kind == 'leaf':
        return draw(st.sampled_from([lambda: nn.ReLU(), lambda: nn.Linear(2, 2), lambda: nn.Identity()]))()
    kids = [draw(trees(depth + 1)) for _ in range(draw(st.integers(0, 4)))]
    if kind == 'seq': return nn.Sequential(*kids)
    if kind == 'list': return nn.ModuleList(kids)
    if kind == 'dict': return nn.ModuleDict({f'k{i}': k for i, k in enumerate(kids)})
    m = nn.Module()
    for i, k in enumerate(kids): setattr(m, f'part_{i}', k)
    return m


@settings(max_examples=60, deadline=None)
@given(trees())
def test_every_listed_path_leads_to_that_module(model):
    from fast_impl.tree import walk
    for node in walk(model):
        if not any(True for _ in node.module.children()): continue
        df = arch_summary(model, list(node.path)).to_df()
        kids = list(node.module.children())
        for i, row in df.iterrows():
            assert get_module(model, row['path']) is kids[i]
            assert get_module(model, '.'.join(filter(None, [node.name, row['name']]))) is kids[i]


# ---- import weight ----

def _run(code: str) -> str:
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout


def test_timm_name_imports_timm_not_fastai():
    out = _run("import sys, fast_impl; fast_impl.arch_summary('convnext_atto'); "
               "print('timm' in sys.modules, 'fastai' in sys.modules)")
    assert out.split() == ['True', 'False']


def test_giant_vit_summary_needs_no_weight_memory():
    code = ("import resource, torch, timm, fast_impl.summary as s\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "t = s.arch_summary('vit_giant_patch14_224')\n"
            "print(t.to_df().params.sum(), "
            "(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)")
    params, mb = map(int, _run(code).split())
    assert params > 1_000_000_000 and mb < 100


def test_built_module_with_pretrained_true_is_a_clear_error():
    with pytest.raises(ValueError, match="already built and holds its weights.*pass its name"):
        resolve(nn.Linear(2, 2), pretrained=True)


def test_only_module_classes_are_fast_impl_archs():
    with pytest.raises(UnknownArchError, match="no fast_impl model"): resolve('fast_impl:VGG_CFGS')
    assert 'fast_impl:VGG_CFGS' not in fast_impl.archs.known_names('fast_impl')


def test_ddp_checkpoint_prefixes_are_stripped(tmp_path):
    src = fast_impl.models.SimpleCNN(3)
    torch.save({f'module.{k}': v for k, v in src.state_dict().items()}, tmp_path / 'ddp.pth')
    m = resolve('fast_impl:SimpleCNN', pretrained=tmp_path / 'ddp.pth')
    assert torch.equal(m.conv1.bias, src.conv1.bias)
