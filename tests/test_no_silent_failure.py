"""Issue 11: no silent failure on any path a user takes. One test (or more) per item of the issue; the table
of bad inputs is in test_bad_input.py, `fast-impl train` on a tiny folder in test_cli.py, DDP in
test_learner.py."""
from __future__ import annotations

import gc, inspect, json, pathlib, re, socket, time, warnings

import numpy as np
import pytest
import torch
from torch import nn

import fast_impl
from fast_impl import compare_archs, layer_decay, layer_summary
from fast_impl.app.cli import main
from fast_impl.archs import UnknownArchError, WeightsUnavailableError, resolve
from fast_impl.inputs import native_input_size

ROOT = pathlib.Path(__file__).parents[1]
torch.set_num_threads(1)  # tiny models; on a busy machine 2 threads spin (10x slower)


def _learner(**kw):
    from fast_impl.fastai import discriminative_learner
    from test_learner import synth_dls
    return discriminative_learner(synth_dls(), 'fastai:xresnet18', widen=0.25, **kw)


def _frozen_warnings(record) -> list[str]:
    return [str(w.message) for w in record if 'groups are frozen' in str(w.message)]

# ---------------------------------------------------------------- 1. per-group rates given to frozen groups


def test_1_per_group_rates_on_frozen_groups_warn_once_per_fit(tmp_path):
    src = _learner()
    torch.save(src.model.state_dict(), tmp_path / 'w.pth')
    learn = _learner(pretrained=tmp_path / 'w.pth')  # frozen, as with pretrained=True
    n = learn.n_groups
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter('always')
        learn.fit_one_cycle(1, lr_max=layer_decay(1e-3, learn))
        assert _frozen_warnings(rec) == [
            f'fit_one_cycle got per-group learning rates but {n - 1} of {n} groups are frozen, so only the '
            f'head group trains and their rates are unused: call learn.unfreeze() first, or use '
            f'learn.fine_tune(...)']
        learn.fit(1, lr=slice(1e-5, 1e-3))
        assert len(_frozen_warnings(rec)) == 2  # once per fit
        learn.fine_tune(1, 1e-3, freeze_epochs=1)  # fastai's frozen phase (slice(lr)) stays quiet
        learn.fit_one_cycle(1, lr_max=layer_decay(1e-3, learn))  # unfrozen by fine_tune: quiet
        assert len(_frozen_warnings(rec)) == 2


def test_1_readme_unfreezes_before_per_group_rates():
    readme = (ROOT / 'README.md').read_text()
    code = readme[readme.index('pretrained=True'):]
    code = code[:code.index('```')]
    assert 'layer_decay(' in code and code.index('.unfreeze()') < code.index('lr_max=layer_decay(')

# ---------------------------------------------------------------- 3. learning rates


def test_3_learning_rates_checked_and_reversed_ranges_warn(capsys):
    from fast_impl.lr import check_lrs, lr_spread
    with pytest.warns(UserWarning, match=r'slice\(0.001, 1e-05\) is reversed'): check_lrs(slice(1e-3, 1e-5))
    assert lr_spread(1e-5, 1e-3, 3) == pytest.approx([1e-5, 1e-4, 1e-3])
    assert lr_spread(1e-5, 1e-3, 1) == [1e-3]
    assert main(['groups', 'torchvision:resnet18', '--lr', '1e-3:1e-5']) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['fast-impl: warning: --lr 1e-3:1e-5 is reversed: the stem gets the higher rate; '
                   'write 1e-05:0.001 for the usual order']  # one line: no source file, no line number

# ---------------------------------------------------------------- 4. mult-adds on every device


class MHA(nn.Module):
    "nn.MultiheadAttention (fused fast path under no_grad on CPU/CUDA) and a TransformerEncoderLayer"
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.enc = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)

    def forward(self, x): return self.enc(self.attn(x, x, x)[0])


def _macs_by_row(arch, device, **kw) -> dict:
    df = layer_summary(arch, depth=None, device=device, **kw).to_df()
    return dict(zip(df.name, df.mult_adds))


DEVICE_CASES = [(MHA, dict(input_size=(2, 10, 32))), ('torchvision:vit_b_16', dict(image_size=32)),
                ('vit_tiny_patch16_224', dict(img_size=32))]


def _check_same_as_meta(device: str):
    for arch, kw in DEVICE_CASES:
        meta, other = _macs_by_row(arch, 'meta', **kw), _macs_by_row(arch, device, **kw)
        assert other == meta and sum(meta.values()) > 0, arch


def test_4_cpu_counts_mult_adds_as_meta():
    _check_same_as_meta('cpu')
    assert torch.backends.mha.get_fastpath_enabled()  # the fast path is back on after the pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_4_cuda_counts_mult_adds_as_meta():
    _check_same_as_meta('cuda')

# ---------------------------------------------------------------- 5, 6. no downloads, fast failure offline


@pytest.fixture
def offline(monkeypatch, tmp_path):
    "No network (name resolution fails, as on a machine without one) and empty weight caches"
    def no_dns(*a, **k): raise socket.gaierror(-2, 'Name or service not known')
    monkeypatch.setattr(socket, 'getaddrinfo', no_dns)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))


@pytest.mark.parametrize('arch', ['resnet18', 'torchvision:resnet18'])
def test_5_pretrained_offline_fails_fast_in_one_line(arch, offline):
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as e: resolve(arch, pretrained=True)
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and f'could not fetch the pretrained weights of {arch}' in msg
    assert "pass a local weights file: pretrained='path/to/weights.pth'" in msg
    from huggingface_hub import constants
    assert not constants.HF_HUB_OFFLINE  # restored


def test_6_segmentation_builders_download_nothing(offline, monkeypatch):
    def no_download(*a, **k): raise AssertionError('a download was attempted')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', no_download)
    for name in ('fcn_resnet50', 'deeplabv3_mobilenet_v3_large', 'lraspp_mobilenet_v3_large'):
        assert fast_impl.arch_summary(f'torchvision:{name}').rows

# ---------------------------------------------------------------- 7. native input sizes


def test_7_native_input_sizes():
    assert layer_summary('vit_base_patch16_384', depth=0).input_shapes == [[1, 3, 384, 384]]
    assert layer_summary('botnet26t_256', depth=0).input_shapes == [[1, 3, 256, 256]]
    inception = resolve('torchvision:inception_v3', init_weights=False)
    assert native_input_size(inception, 'torchvision:inception_v3') == (1, 3, 299, 299)
    assert native_input_size(resolve('vit_tiny_patch16_224', img_size=32)) == (1, 3, 32, 32)  # built for 32
    assert native_input_size(resolve('fast_impl:SimpleCNN')) is None  # unknown: 224 is assumed
    c = compare_archs(['fast_impl:SimpleCNN', 'botnet26t_256']).to_df()
    assert list(c.input_shape) == ['[1, 3, 224, 224]', '[1, 3, 256, 256]']


def test_7_cli_layers_uses_the_native_size(capsys):
    assert main(['layers', 'botnet26t_256', '--depth', '0']) == 0
    assert 'Forward pass on: meta (input [1, 3, 256, 256]' in capsys.readouterr().out


def test_7_train_builds_models_for_the_data_size():
    from fast_impl.app.plan import size_kwargs
    assert size_kwargs('vit_tiny_patch16_224', 32) == {'img_size': 32}
    assert size_kwargs('torchvision:vit_b_16', 32) == {'image_size': 32}
    assert size_kwargs('fast_impl:ResNet18', 32) == {}

# ---------------------------------------------------------------- 8, 9. Learner: groups, keywords, n_groups


def test_8_groups_and_keywords_checked_at_construction():
    with pytest.raises(ValueError, match=r"groups='stage' does not split XResNet: did you mean 'stages'\?"):
        _learner(groups='stage')
    with pytest.raises(TypeError, match=r"'metric' is not a Learner or builder argument of fastai:xresnet18: "
                                        r"did you mean 'metrics'\?"):
        _learner(metric=None)


def test_9_n_groups_and_layer_decay_before_the_first_fit():
    learn = _learner()
    assert learn.opt is None and learn.n_groups == 6
    np.testing.assert_allclose(layer_decay(1e-3, learn, 0.5), 1e-3 * 0.5 ** np.arange(5, -1, -1))
    assert learn.opt is None  # asking did not create the optimizer
    learn.create_opt()
    assert learn.n_groups == len(learn.opt.param_lists) == 6

# ---------------------------------------------------------------- 10. the package, names, weights files, data


def test_10_package_names():
    from fast_impl import resolve as r
    # the function (its module is fast_impl.archs)
    assert r is resolve and type(r('resnet18')).__name__ == 'ResNet'
    assert 'pretrained' in inspect.signature(r).parameters and fast_impl.archs.resolve is resolve
    names = dir(fast_impl)
    assert len(names) == len(set(names)) and 'models' in names and 'layer_decay' in names


def test_10_bad_tag_is_an_error_without_a_false_warning():
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the 'built on the CPU instead' warning would fail here
        with pytest.raises(UnknownArchError, match="no weights tagged 'no_such_tag' for resnet18"):
            resolve('resnet18.no_such_tag')


def test_10_prefix_suggestions():
    with pytest.raises(UnknownArchError) as e: resolve('vit_base')
    assert 'closest known names: vit_base_mci_224 (timm), vit_base_patch8_224 (timm)' in str(e.value)

# ---------------------------------------------------------------- 11. smaller ones


def test_11_version(capsys):
    assert main(['--version']) == 0 and capsys.readouterr().out == f'fast-impl {fast_impl.__version__}\n'


def test_11_one_path_syntax(capsys):
    outs = []
    for path in (['4.0'], ['4', '0'], ['layer1.0'], ['layer1', '0']):
        assert main(['summary', 'torchvision:resnet18', *path]) == 0
        outs.append(capsys.readouterr().out)
    assert len(set(outs)) == 1 and '(conv1)' in outs[0]
    assert main(['groups', 'torchvision:resnet18', '--at', 'layer2, layer4']) == 0
    assert main(['groups', 'torchvision:resnet18', '--at', '5,7']) == 0
    a, b = capsys.readouterr().out.split('Total params')[:2]
    assert a.count('layer2.0') == 1 and 'layer4.0' in b


def test_11_layers_columns_line_up():
    text = str(layer_summary('vit_base_patch16_224', depth=2))
    lines = [l for l in text.splitlines() if l.startswith(('Layer', '├', '│'))]
    starts = [m.start() for m in re.finditer(r'(?<=\s\s)\S', lines[0])]  # Kernel, Output, Param #, Mult-Adds
    assert len(starts) == 4 and any(len(c) > 14 for c in re.findall(r'\[[\d, ]+\]', text))  # a long shape
    for l in lines[1:]:  # every cell starts where its header does
        assert all(l[i - 1] == ' ' and l[i] != ' ' for i in starts), l
    seed = str(layer_summary(fast_impl.models.SimpleCNN(), input_size=(1, 3, 32, 32), depth=2, col_width=14))
    assert '[1, 32, 32, 32] 896            917,504' in seed  # torchinfo's fixed width, as in seed 001


def test_11_show_groups_html_and_text_share_headers():
    learn = _learner()
    rep = learn.show_groups()
    heads = re.findall(r'<th[^>]*>([^<]*)</th>', rep._repr_html_())
    first = str(rep).splitlines()[1]
    assert heads == [h.strip() for h in first.strip('|').split('|')]


def test_11_notebook_05_tells_the_truth_about_frozen_biases():
    nb = json.loads((ROOT / 'nbs' / '05_fine_tuning.ipynb').read_text())
    text = ' '.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown').lower()
    assert 'biases stay trainable' not in text and 'biases' in text


def test_11_xresnet_names_close_their_file():
    from fast_impl.archs import _xresnet_names
    with warnings.catch_warnings():
        warnings.simplefilter('error', ResourceWarning)
        names = _xresnet_names()
        gc.collect()
    assert 'xresnet18' in names
