"Issue 2: the package, its set-up commands, and the seed architectures with their exact figures."
import pathlib, re, subprocess, sys

import pytest
import torch

from fast_impl.models import *

ROOT = pathlib.Path(__file__).parents[1]
GOLDEN = ROOT / 'tests' / 'golden'


def seed_table(name: str) -> list[tuple[str, int]]:
    "The (name, count) rows of a seed 000 parameter table stored in tests/golden"
    rows = re.findall(r'^\|\s+(\S+\.weight)\s+\|\s+(\d+)\s+\|$', (GOLDEN / f'{name}.txt').read_text(), re.M)
    return [(n, int(c)) for n, c in rows]


@pytest.mark.parametrize('cls,seed', [(Plain18Layer, 'seed000_plain18'), (Plain28Layer, 'seed000_plain28')])
def test_plain_nets_match_seed_000_row_by_row(cls, seed):
    model = cls()
    rows = [(n, p.numel()) for n, p in model.network.named_parameters()]
    assert rows == seed_table(seed)
    assert sum(c for _, c in rows) == 685_656


def test_plain_nets_optional_head():
    m = Plain18Layer(n_out=10)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in m.parameters()) == 685_656 + 128 * 10 + 10
    assert Plain28Layer()(torch.rand(1, 3, 32, 32)).shape == (1, 128, 4, 4)


@pytest.mark.parametrize('fs,n', [(3, 896), (5, 2_432)])
def test_simple_cnn(fs, n):
    m = SimpleCNN(fs)
    assert sum(p.numel() for p in m.parameters()) == n
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 32, 16, 16)


def test_inception_variants_and_reductions():
    old, new, asym = [sum(p.numel() for p in c(3, 32).parameters())
                      for c in (Inception, NewInception, AsymInception)]
    assert (old, new, asym) == (35_264, 28_128, 19_008)
    assert f'{(old - new) / old:.2%}' == '20.24%'
    assert f'{(old - asym) / old:.2%}' == '46.10%'
    for c in (Inception, NewInception, AsymInception):
        assert c(3, 32)(torch.rand(1, 3, 32, 32)).shape == (1, 96, 32, 32)


def test_classic_architectures_shapes():
    assert AlexNet(num_classes=10)(torch.rand(1, 3, 128, 128)).shape == (1, 10)
    assert InceptionModule(3, 32)(torch.rand(1, 3, 128, 128)).shape == (1, 128, 128, 128)
    assert ResNet18()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_inception_module_shares_one_relu():
    m = InceptionModule(3, 32)
    assert m.branch1[1] is m.branch2[2] is m.branch3[2] is m.branch4[2]


@pytest.mark.parametrize('depth', [11, 13, 16, 19])
@pytest.mark.parametrize('bn', [False, True])
def test_vgg_matches_torchvision_parameter_counts(depth, bn):
    import torchvision
    with torch.device('meta'):
        ours = VGG(depth, batch_norm=bn)
        ref = getattr(torchvision.models, f'vgg{depth}{"_bn" if bn else ""}')()
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(ours) == count(ref)
    assert [type(l) for l in ours.features] == [type(l) for l in ref.features]


def test_vgg_bad_depth_names_valid_ones():
    with pytest.raises(ValueError, match=r"vgg11.*vgg19"): VGG(12)


def test_models_have_no_prints(capsys):
    for m in [Inception(3, 32), NewInception(3, 32), AsymInception(3, 32), InceptionModule(3, 8)]:
        m(torch.rand(1, 3, 8, 8))
    assert capsys.readouterr().out == ''


def test_import_is_light():
    code = "import sys, fast_impl; fast_impl.models; print('fastai' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ['False', 'False']


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text()
    cmds = re.findall(r'^(make \w+)$', readme, re.M)
    assert 'make test' in cmds and 'make demo' in cmds
    assert re.search(r'^make test$', (ROOT / '.ci' / 'run').read_text(), re.M)
    assert '-euo pipefail' in (ROOT / '.ci' / 'run').read_text()


def test_makefile_venv_keyed_on_setup_cfg():
    mk = (ROOT / 'Makefile').read_text()
    assert re.search(r'^\$\(STAMP\): setup\.cfg', mk, re.M)
    assert re.search(r'^test: \$\(STAMP\)', mk, re.M) and re.search(r'^demo: \$\(STAMP\)', mk, re.M)


@pytest.mark.skipif(not (ROOT / '.venv' / '.installed').exists(), reason='.venv not built by make')
def test_second_make_test_reuses_the_venv():
    # make -q exits 0 when the target is up to date: a second `make test` installs nothing
    r = subprocess.run(['make', '-q', '.venv/.installed'], cwd=ROOT)
    assert r.returncode == 0
    dry = subprocess.run(['make', '-n', 'test'], cwd=ROOT, capture_output=True, text=True).stdout
    assert 'pip install' not in dry and '-m venv' not in dry and 'pytest' in dry


def test_registries_refuse_a_duplicate_name():
    "Arch sources, split strategies and CLI commands are ordered tables that refuse a name taken twice"
    from fast_impl.app.cli import COMMANDS, command
    from fast_impl.archs import SOURCES, register_source
    assert list(SOURCES) == ['fast_impl', 'timm', 'torchvision', 'fastai'] and 'summary' in COMMANDS
    with pytest.raises(ValueError, match="arch source 'timm' is already registered"):
        register_source('timm')(print)
    def summary(): pass
    with pytest.raises(ValueError, match="command 'summary' is already registered"): command(summary)
    with pytest.raises(ValueError, match="unknown arch source 'nope'; valid: fast_impl, timm"):
        SOURCES.get_or_raise('nope')
