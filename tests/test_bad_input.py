"""Issue 11: a table of bad inputs across the CLI and the Python API. Each gets exit status 2 (CLI) or its
error type (API), a one-line message naming what was wrong, no traceback, and leaves files and models as they
were."""
from __future__ import annotations

import math, pathlib

import pytest
import torch
from torch import nn

from fast_impl.app.cli import main

torch.set_num_threads(1)  # tiny models; on a busy machine 2 threads spin (10x slower)

R18 = 'torchvision:resnet18'
CNN = 'fast_impl:SimpleCNN'

# (argv, a piece of the one-line message); the CLI runs in-process here (test_cli.py runs it as a subprocess)
CLI = [
    (['frobnicate'], "unknown command 'frobnicate'; valid commands: summary"),
    (['summary'], 'the following arguments are required: arch'),
    (['summary', 'resnt50'], "unknown arch 'resnt50'"),
    (['summary', 'vit_base'], 'closest known names: vit_base_'),
    (['summary', 'resnet18.no_such_tag'], "no weights tagged 'no_such_tag' for resnet18; valid tags: a1"),
    (['summary', 'tf:resnet50'], "unknown arch source 'tf'"),
    (['summary', R18, '12'], 'index 12 is out of range at the root (10 children)'),
    (['summary', R18, 'layer9'], "no child named 'layer9' at the root"),
    (['summary', R18, '4..0'], "a module path has an empty step: '4..0'"),
    (['params', 'nosuch_net'], "unknown arch 'nosuch_net'"),
    (['layers', CNN, '--input', '1,3,x'], '--input must be comma-separated positive integers'),
    (['layers', CNN, '--input', '0,3,32,32'], '--input must be comma-separated positive integers'),
    (['layers', CNN, '--depth', 'q'], "invalid int value: 'q'"),
    (['layers', CNN, '--depth', '-1'], 'depth must be an int >= 0'),
    (['layers', CNN, '--format', 'pdf'], "invalid choice: 'pdf'"),
    (['layers', CNN, '--input', '1,4,32,32'], "forward pass on meta failed in module 'conv1' (Conv2d)"),
    (['layers', 'botnet26t_256', '--input', '1,3,224,224'], 'botnet26t_256 is made for [1, 3, 256, 256]'),
    (['layers', CNN, '--device', 'cpu'], 'unrecognized arguments: --device'),
    (['compare'], 'compare needs two or more ARCHs, got 0'),
    (['compare', R18], 'compare needs two or more ARCHs, got 1'),
    (['compare', CNN, 'nosuch_net'], "unknown arch 'nosuch_net'"),
    (['groups', R18, '--n', '2', '--stages'], 'give one of --stages, --blocks, --n N, --at PATHS'),
    (['groups', R18, '--lr', 'fast'], "--lr must be LO:HI or HI with positive, finite rates"),
    (['groups', R18, '--lr', '0:1e-3'], "got '0:1e-3'"),
    (['groups', R18, '--lr=-1e-3'], "got '-1e-3'"),
    (['groups', R18, '--lr', 'nan'], "got 'nan'"),
    (['groups', R18, '--lr', 'inf'], "got 'inf'"),
    (['groups', R18, '--lr', '1e-5:1e-3', '--decay', '0.5'], 'give either --lr LO:HI or --decay D'),
    (['groups', R18, '--decay', '1.5'], 'decay must be in (0, 1]'),
    (['groups', R18, '--decay', '0'], 'decay must be in (0, 1]'),
    (['groups', R18, '--n', '0'], '0'),
    (['groups', R18, '--at', 'layer9'], "no child named 'layer9'"),
    (['groups', R18, '--at', ' , '], '--at must be comma-separated module paths'),
    (['train'], 'train needs at least one ARCH'),
    (['train', 'fast_impl:ResNet18', '--data', 'nowhere'], 'needs train/ and valid/ subfolders'),
    (['train', 'fast_impl:ResNet18', '--data', 'empty'], 'has 0 training and 0 validation images'),
    (['train', 'fast_impl:ResNet18', '--digits', '--data', 'empty'], 'give either --data FOLDER or --digits'),
    (['train', 'fast_impl:ResNet18', '--epochs', '0'], 'epochs must be an int >= 1; got 0'),
    (['train', 'fast_impl:ResNet18', '--bs', '0'], 'bs must be an int >= 1; got 0'),
    (['train', 'fast_impl:ResNet18', '--lr', '-1'], "--lr must be LO:HI or HI with positive, finite rates"),
    (['train', 'fast_impl:ResNet18', '--size', '4'], 'size must be an int >= 8; got 4'),
    (['train', 'nosuch_net'], "unknown arch 'nosuch_net'"),
    (['train', 'fast_impl:ResNet18', '--out', 'notes.txt'], "out 'notes.txt' is a file, not a folder"),
    (['train', 'fast_impl:ResNet18', '--data', 'cifar100'],
     "is neither a dataset (digits, cifar10) nor an image folder: did you mean 'cifar10'?"),
    (['train', 'fast_impl:ResNet18', '--data', 'cifar10'], "CIFAR-10 is not in fastai's data folder"),
    (['train', 'fast_impl:ResNet18', '--limit', '0'], 'limit must be an int >= 1; got 0'),
    (['train', 'fast_impl:AlexNet'], 'cannot take 32x32 images (forward pass on meta failed in module '
                                     "'features.12' (MaxPool2d)"),
    (['train', 'fast_impl:AlexNet', '--size', '62'], 'the smallest size it takes is 63: use --size 63 or'),
    (['train', 'fast_impl:ResNet18', '--groups', 'stage'], '--groups must be stages, blocks or a number'),
    (['train', 'fast_impl:ResNet18', '--groups', '0'], "got '0'"),
    (['train', 'fast_impl:ResNet18', '--lr', '1e-4:1e-3', '--decay', '0.5'], 'give either --lr LO:HI or'),
    (['train', 'fast_impl:ResNet18', '--device', 'gpu'],
     "device must be a torch device such as 'cpu', 'cuda' or 'cuda:1'; got 'gpu'"),
    (['train', 'fast_impl:ResNet18', '--device', 'meta'], "device 'meta' holds no data"),
    (['train', 'fast_impl:ResNet18', '--opt', 'rmsprop'], "invalid choice: 'rmsprop'"),
    (['train', 'fast_impl:ResNet18', '--pretrained', '--weights', 'x.pth'], 'give either --pretrained or'),
    (['train', 'fast_impl:ResNet18', '--weights', 'nowhere.pth'], "file 'nowhere.pth' does not exist"),
    (['train', 'fast_impl:ResNet18', '--weights', 'notes.txt', '--limit', '1', '--bs', '8'],
     "'notes.txt' is not a weights file"),
    (['demo', '--seeds', '0'], 'seeds must be an int >= 1'),
    (['demo', '--out', 'notes.txt'], "out 'notes.txt' is a file, not a folder"),
]


def _files(root: pathlib.Path) -> dict:
    "Every file and folder under `root` with its bytes (None for a folder)"
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob('*'))}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    "The working folder of each case, holding what bad inputs point at: a folder, a text file, empty folders"
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'notes.txt').write_text('not weights\n')
    for d in ('train', 'valid'): (tmp_path / 'empty' / d).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('FASTAI_HOME', str(tmp_path / 'fastai_home'))  # holds no CIFAR-10 (and is not created)
    monkeypatch.setattr('fast_impl.archs.reachable', lambda url, timeout: False)  # offline, always
    return tmp_path


@pytest.mark.parametrize('argv,msg', CLI, ids=[' '.join(a) for a, _ in CLI])
def test_cli(argv, msg, sandbox, capsys):
    before = _files(sandbox)
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and out == '', (code, out)
    assert len(lines) == 1 and lines[0].startswith('fast-impl: error: ') and msg in lines[0], err
    assert 'Traceback' not in err and _files(sandbox) == before  # nothing written


# ---------------------------------------------------------------- the Python API

def _toy():
    from test_learner import Toy
    return Toy()


def _learner():
    from fast_impl.fastai import discriminative_learner
    from test_learner import Toy, synth_dls
    return discriminative_learner(synth_dls(), Toy(), groups=3)


def _dls():
    from test_learner import synth_dls
    return synth_dls()


def learner_kw(**kw):
    "A case's call: `discriminative_learner(dls, Toy, **kw)` on the `dls` its setup gave"
    from fast_impl.fastai import discriminative_learner
    from test_learner import Toy
    return lambda d: discriminative_learner(d, Toy, **kw)


def _api():
    "(id, setup, call, error type, message piece): `call(setup())` must raise, leaving what setup gave as is"
    return _arch_cases() + _summary_cases() + _data_cases() + _fit_cases()


def _arch_cases():
    "Bad input to `resolve`, `load_weights`, `get_module`, `arch_summary` and `count_parameters`"
    from fast_impl import arch_summary, count_parameters, get_module, resolve
    from fast_impl.archs import UnknownArchError, load_weights
    none = lambda: None
    return [
        ('resolve unknown', none, lambda _: resolve('resnt50'),
         UnknownArchError, 'closest known names: resnet50'),
        ('resolve prefix', none, lambda _: resolve('vit_base'),
         UnknownArchError, 'vit_base_patch16_224 (timm)'),
        ('resolve int', none, lambda _: resolve(3), TypeError, 'arch must be an nn.Module'),
        ('resolve bad tag', none, lambda _: resolve('resnet18.nope'),
         UnknownArchError, "no weights tagged 'nope'"),
        ('pretrained=1', none, lambda _: resolve(CNN, pretrained=1), TypeError, 'pretrained must be True'),
        ('pretrained dir', none, lambda _: resolve(CNN, pretrained='folder'),
         IsADirectoryError, 'is a directory'),
        ('pretrained text', none, lambda _: resolve(CNN, pretrained='notes.txt'),
         ValueError, 'is not a weights file'),
        ('pretrained none', none, lambda _: resolve(CNN, pretrained='x.pth'),
         FileNotFoundError, 'does not exist'),
        ('pretrained built', _toy, lambda m: resolve(m, pretrained=True), ValueError, 'already built'),
        ('kwargs built', _toy, lambda m: resolve(m, num_classes=3),
         TypeError, "builder arguments ['num_classes']"),
        ('load text', _toy, lambda m: load_weights(m, 'notes.txt'), ValueError, 'is not a weights file'),
        ('get_module name', _toy, lambda m: get_module(m, 'nope'),
         KeyError, "no child named 'nope' at the root"),
        ('arch_summary index', _toy, lambda m: arch_summary(m, [99]), IndexError, 'index 99 is out of range'),
        ('count_parameters', none, lambda _: count_parameters(3.5), TypeError, 'arch must be an nn.Module'),
    ]


def _summary_cases():
    "Bad input to `layer_summary` and `compare_archs` (and a learner's `n_out`)"
    from fast_impl import compare_archs, layer_summary
    from fast_impl.summary import ForwardError
    none = lambda: None
    return [
        ('layers size', _toy, lambda m: layer_summary(m, input_size=(1, 3, 0, 32)),
         TypeError, 'input_size must be'),
        ('layers channels', _toy, lambda m: layer_summary(m, input_size=(1, 4, 8, 8)),
         ForwardError, "'stem.0'"),
        ('layers depth', _toy, lambda m: layer_summary(m, depth=-1), ValueError, 'depth must be an int >= 0'),
        ('layers width', _toy, lambda m: layer_summary(m, col_width=0), ValueError, 'col_width must be'),
        ('layers cols', _toy, lambda m: layer_summary(m, col_names=['x']), ValueError, 'col_names must be'),
        ('layers device', _toy, lambda m: layer_summary(m, device='gpu9'), ValueError, 'device must be'),
        ('layers xpu', _toy, lambda m: layer_summary(m, device='xpu'), ValueError,
         "device 'xpu' is not available on this machine"),
        ('layers dtype', _toy, lambda m: layer_summary(m, dtype='float16'), TypeError, 'dtype must be'),
        ('compare {}', none, lambda _: compare_archs({}), TypeError, 'archs must be a non-empty list'),
        ('n_out=0', _dls, learner_kw(n_out=0), ValueError, 'n_out must be a number of classes >= 1'),
        ('compare str', none, lambda _: compare_archs('resnet18'),
         TypeError, 'archs must be a non-empty list'),
    ]


def _data_cases():
    "Bad input to `layer_decay`, `check_lrs`, `digits_dls` and `digits_images`"
    from fast_impl import digits_dls, layer_decay
    from fast_impl.images import digits_images
    from fast_impl.lr import check_lrs
    none = lambda: None
    nan = float('nan')
    return [
        ('decay lr 0', none, lambda _: layer_decay(0, 3), ValueError, 'lr_max must be a positive, finite'),
        ('decay lr nan', none, lambda _: layer_decay(nan, 3), ValueError, 'got nan'),
        ('decay n', none, lambda _: layer_decay(1e-3, 0), ValueError, 'n_groups must be a positive int'),
        ('decay decay', none, lambda _: layer_decay(1e-3, 3, 0), ValueError, 'decay must be in (0, 1]'),
        ('check_lrs inf', none, lambda _: check_lrs(slice(1e-3, math.inf)), ValueError, 'slice end must be'),
        ('digits n 0', none, lambda _: digits_dls(n_per_class=0),
         ValueError, 'n_per_class must be an int >= 1'),
        ('digits bs 0', none, lambda _: digits_dls(bs=0), ValueError, 'bs must be an int >= 1; got 0'),
        ('digits pct', none, lambda _: digits_dls(valid_pct=1.0),
         ValueError, 'valid_pct must be between 0 and 1'),
        ('digits class', none, lambda _: digits_dls([3, 12]), ValueError, 'classes must be digits 0-9'),
        ('digits size', none, lambda _: digits_images(size=4), ValueError, 'size must be >= 8'),
    ]


def _fit_cases():
    "Bad input to `discriminative_learner`, a Learner's fit methods and `train_archs`"
    from fast_impl.app.train import train_archs
    none = lambda: None
    nan = float('nan')
    return [
        ('groups=stage', _dls, learner_kw(groups='stage'), ValueError, "did you mean 'stages'?"),
        ('groups=0', _dls, learner_kw(groups=0), ValueError, 'groups=0 does not split Toy'),
        ('groups path', _dls, learner_kw(groups=['nope']), ValueError, "no child named 'nope'"),
        ('metric=', _dls, learner_kw(metric=None),
         TypeError, "'metric' is not a Learner or builder argument"),
        ('learner pretrained=1', _dls, learner_kw(pretrained=1), TypeError, 'pretrained must be True'),
        ('fit lr 0', _learner, lambda l: l.fit_one_cycle(1, 0),
         ValueError, 'fit_one_cycle learning rate must be'),
        ('fit lr nan', _learner, lambda l: l.fit(1, lr=nan), ValueError, 'fit learning rate must be'),
        ('fit lr list', _learner, lambda l: l.fit_one_cycle(1, [1e-3, -1e-3, 1e-3]),
         ValueError, 'rate[1] must be'),
        ('fit slice 0', _learner, lambda l: l.fit_flat_cos(1, slice(0, 1e-3)),
         ValueError, 'slice start must be'),
        ('train epochs', none, lambda _: train_archs(['fast_impl:ResNet18'], epochs=0),
         ValueError, 'epochs must be'),
        ('train folder', none, lambda _: train_archs([CNN], data='folder'),
         FileNotFoundError, 'needs train/'),
    ]


API = _api()


def _state(obj) -> list:
    "What a case must leave unchanged: a module's tensors and modes, a Learner's model and optimizer rates"
    if obj is None or isinstance(obj, (list, tuple)) or hasattr(obj, 'train_ds'): return []
    from fastai.learner import Learner
    if isinstance(obj, Learner):
        hypers = [dict(h) for h in obj.opt.hypers] if obj.opt is not None else None
        return _state(obj.model) + [hypers, obj.opt is None]
    return [(k, v.clone()) for k, v in obj.state_dict().items()] + [[m.training for m in obj.modules()]]


def _same(a: list, b: list) -> bool:
    if len(a) != len(b): return False
    for x, y in zip(a, b):
        if isinstance(x, tuple): ok = x[0] == y[0] and torch.equal(x[1], y[1])
        else: ok = x == y
        if not ok: return False
    return True


@pytest.mark.parametrize('setup,call,exc,msg', [c[1:] for c in API], ids=[c[0] for c in API])
def test_api(setup, call, exc, msg, sandbox):
    obj = setup()
    files, state = _files(sandbox), _state(obj)
    with pytest.raises(exc) as e: call(obj)
    text = str(e.value)
    assert msg in text, text
    assert len(text.strip().splitlines()) == 1 and 'Traceback' not in text, text
    assert _files(sandbox) == files and _same(_state(obj), state)  # nothing written, nothing changed


def test_the_table_is_large():
    assert len(CLI) + len(API) >= 40 and len(CLI) >= 20 and len(API) >= 20
