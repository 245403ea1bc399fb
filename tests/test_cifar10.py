"""CIFAR-10 training (seeds 002/003) on a miniature CIFAR-10 in fastai's layout under a temporary FASTAI_HOME:
`untar_data` finds it already there (no network), and `fast-impl train` trains the seed families on it."""
from __future__ import annotations

import pathlib, socket, time

import numpy as np
import pytest
import torch

from fast_impl.app.cli import main

torch.set_num_threads(1)  # tiny models; on a busy machine 2 threads spin (10x slower)

CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def write_cifar10(home: pathlib.Path, n_train: int = 3, n_test: int = 2) -> pathlib.Path:
    "A miniature CIFAR-10 as fastai extracts it: `data/cifar10/{train,test}/CLASS/*.png` and `labels.txt`"
    from PIL import Image
    root, rng = home / 'data' / 'cifar10', np.random.default_rng(0)
    for split, n in (('train', n_train), ('test', n_test)):
        for i, c in enumerate(CLASSES):
            (root / split / c).mkdir(parents=True)
            for j in range(n):  # each class its own tint, so a model can learn something
                img = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
                img[..., i % 3] += np.uint8(17 * i)
                Image.fromarray(img).save(root / split / c / f'{j}_{c}.png')
    (root / 'labels.txt').write_text('\n'.join(CLASSES) + '\n')
    return root


@pytest.fixture(scope='module')
def cifar_home(tmp_path_factory) -> pathlib.Path:
    home = tmp_path_factory.mktemp('fastai_home')
    write_cifar10(home)
    return home


@pytest.fixture
def offline(monkeypatch):
    "Any attempt to reach the network fails the test"
    def refuse(*args, **kwargs): raise AssertionError(f'network used: {args[1:]}')
    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)


@pytest.fixture
def home(cifar_home, monkeypatch, offline) -> pathlib.Path:
    monkeypatch.setenv('FASTAI_HOME', str(cifar_home))
    return cifar_home


def test_untar_data_finds_it_already_there(home, tmp_path, monkeypatch):
    import fastai.data.external as E
    from fast_impl.fastai.data import cifar10_path
    calls = []
    real = E.untar_data
    monkeypatch.setattr(E, 'untar_data', lambda url, *a, **kw: calls.append(url) or real(url, *a, **kw))
    E.fastai_cfg()  # fastai caches the config of the FASTAI_HOME it reads first ...
    monkeypatch.setenv('FASTAI_HOME', str(tmp_path / 'elsewhere'))
    write_cifar10(tmp_path / 'elsewhere', 1, 1)
    assert cifar10_path() == tmp_path / 'elsewhere' / 'data' / 'cifar10'  # ... cifar10_path reads the new one
    monkeypatch.setenv('FASTAI_HOME', str(home))
    assert cifar10_path() == home / 'data' / 'cifar10' and calls == [E.URLs.CIFAR] * 2


def test_cifar10_dls(home):
    from fast_impl.fastai.data import cifar10_dls
    dls = cifar10_dls(size=40, bs=8, limit=2, device='cpu')
    assert dls.c == 10 and list(dls.vocab) == CLASSES
    assert len(dls.train_ds) == len(dls.valid_ds) == 20  # `limit` per class in train and in test
    assert {p.parent.parent.name for p in dls.valid_ds.items} == {'test'}
    xb, yb = dls.one_batch()
    assert xb.shape == (8, 3, 40, 40) and -1 <= xb.min() and xb.max() <= 1 and xb.min() < 0  # seed 003's 0.5
    x0, _ = cifar10_dls(size=32, bs=8, norm='none', device='cpu').one_batch()
    assert x0.shape == (8, 3, 32, 32) and 0 <= x0.min() and x0.max() <= 1  # seed 002: pixels in [0, 1]
    assert len(cifar10_dls(device='cpu').train_ds) == 30  # every image without a limit


def test_missing_dataset_is_one_line_within_seconds(tmp_path, monkeypatch):
    from fast_impl.fastai.data import cifar10_dls
    monkeypatch.setenv('FASTAI_HOME', str(tmp_path))
    monkeypatch.setattr('fast_impl.archs.reachable', lambda url, timeout: False)  # as with no network
    start = time.time()
    with pytest.raises(FileNotFoundError) as e: cifar10_dls()
    msg = str(e.value)
    assert time.time() - start < 5 and len(msg.splitlines()) == 1
    assert f"({tmp_path / 'archive' / 'cifar10.tgz'})" in msg and 'there is no network' in msg
    with pytest.raises(FileNotFoundError, match='download=False'): cifar10_dls(download=False)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even fastai's config


def test_smallest_size_found_on_meta():
    from fast_impl.app.plan import size_kwargs, smallest_size
    from fast_impl.models import AlexNet
    assert smallest_size('fast_impl:AlexNet', 32) == 63
    m = AlexNet(10).eval()
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 63, 63)).shape == (1, 10)  # the real pass agrees on the edge
        with pytest.raises(RuntimeError): m(torch.zeros(1, 3, 62, 62))
    with pytest.raises(ValueError, match='the smallest size it takes is 63: use --size 63 or more'):
        size_kwargs('fast_impl:AlexNet', 32)
    assert size_kwargs('fast_impl:ResNet18', 64) == {'img_size': 64}  # built for the size


def test_plan_builds_each_arch_once_on_meta(tmp_path):
    "The plan checks the size and the groups on one meta build per arch (two when it needs the image size)"
    from fast_impl.app.plan import make_plan
    from fast_impl.models import ResNet18
    calls = []
    def resnet(**kw):
        calls.append(kw)
        return ResNet18(**kw)
    kw = dict(data='digits', epochs=1, lr=1e-3, size=32, bs=8, seed=0, limit=1, out=tmp_path, groups='stages',
              decay=None, pretrained=False, norm=None, opt='adam', schedule='one_cycle', device='cpu')
    plan = make_plan([resnet], **kw)
    assert calls == [{}] and plan.kws == [{}]
    calls.clear()
    assert make_plan([resnet], **(kw | dict(size=64))).kws == [{'img_size': 64}]
    assert calls == [{}, {'img_size': 64}]


def test_train_the_seed_families(home, tmp_path, capsys):
    "AlexNet at 64 px, VGG16, the seeds' ResNet18, GoogLeNet: an epoch of seed 003's SGD (1e-3, momentum 0.9)"
    archs = ['fast_impl:AlexNet', 'fast_impl:VGG', 'fast_impl:ResNet18', 'torchvision:googlenet']
    out = tmp_path / 'out'
    code = main(['train', *archs, '--data', 'cifar10', '--size', '64', '--epochs', '1', '--limit', '1',
                 '--opt', 'sgd', '--lr', '1e-3', '--schedule', 'constant', '--device', 'cpu',
                 '--out', str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert stdout.count('epoch      train_loss  train_accuracy  valid_loss  valid_accuracy  time') == 4
    for a in archs: assert f'| {a} |' in stdout
    import pandas as pd
    df = pd.read_csv(out / 'train_results.csv')
    assert list(df.arch) == archs and (df.best_epoch == 1).all() and df.accuracy.between(0, 1).all()
    for a in archs:
        folder = out / a.replace(':', '_')
        h = pd.read_csv(folder / 'history.csv')
        assert list(h.columns) == ['epoch', 'train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy',
                                   'seconds']
        assert len(h) == 1 and np.isfinite(h.drop(columns='epoch').to_numpy()).all() and (h.seconds > 0).all()
        assert (folder / 'best.pth').stat().st_size > 1000
    assert (out / 'train_curves.png').stat().st_size > 10_000


def test_fine_tune_from_saved_weights_with_layer_decay(home, tmp_path, capsys):
    "A run's best.pth starts the next: every group trains, the head at lr, each earlier one `decay` x less"
    from fast_impl.app.plan import make_plan
    from fast_impl.app.train import group_lrs, plan_dls, plan_learner, train_archs
    first = train_archs(['fast_impl:ResNet18'], data='cifar10', epochs=2, size=32, limit=1,
                        out=tmp_path / 'a', device='cpu')[0]
    assert first.weights == tmp_path / 'a' / 'fast_impl_ResNet18' / 'best.pth'
    assert len(first.curves['seconds']) == 2
    plan = make_plan(['fast_impl:ResNet18'], data='cifar10', epochs=1, lr=1e-3, size=32, bs=10, seed=0,
                     limit=1, out=tmp_path / 'b', groups=3, decay=0.5, pretrained=first.weights, norm=None,
                     opt='adam', schedule='one_cycle', device='cpu')
    learn = plan_learner(plan_dls(plan, 10), plan.archs[0], plan.kws[0], plan, tmp_path / 'b')
    assert learn.n_groups == 3 and learn.opt.frozen_idx == 0  # unfrozen: every group trains
    np.testing.assert_allclose(group_lrs(learn, plan), [2.5e-4, 5e-4, 1e-3])
    saved = torch.load(first.weights)
    assert torch.equal(learn.model.conv1[0].weight.cpu(), saved['conv1.0.weight'])  # the saved body
    plan.decay = None
    np.testing.assert_allclose(group_lrs(learn, plan), [1e-5, 1e-4, 1e-3])  # fastai's fine_tune spread
    res = train_archs(['fast_impl:ResNet18'], data='cifar10', epochs=1, size=32, limit=1, out=tmp_path / 'b',
                      pretrained=first.weights, groups=3, decay=0.5, device='cpu')
    assert res[0].epoch == 1 and (tmp_path / 'b' / 'fast_impl_ResNet18' / 'history.csv').is_file()


def test_plot_has_integer_epochs(tmp_path):
    from fast_impl.app.train import TrainResult, plot_curves
    def result(n):
        c = {k: list(np.linspace(0.2, 0.8, n)) for k in ('train_loss', 'train_accuracy', 'valid_loss',
                                                         'valid_accuracy')}
        return TrainResult('m', 1, 0., 0., 0., 0., 1, 1., curves=c)
    for n in (1, 3, 7):
        fig = plot_curves([result(n)], tmp_path / f'{n}.png')
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
