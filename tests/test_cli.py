"Issue 7: every `fast-impl` command in a subprocess, as a user runs it; bad input exits 2 with one line."
import pathlib, subprocess, sys

import pytest

GOLDEN = pathlib.Path(__file__).parent / 'golden'


def cli(*args, ok=True, timeout=600):
    r = subprocess.run([sys.executable, '-m', 'fast_impl.app.cli', *map(str, args)], capture_output=True,
                       text=True, timeout=timeout)
    if ok: assert r.returncode == 0, r.stderr
    return r


def test_summary_matches_seed_004():
    out = cli('summary', 'torchvision:wide_resnet50_2').stdout
    assert out.rstrip('\n') == (GOLDEN / 'seed004_wrn50.txt').read_text().rstrip('\n')
    wrn = 'torchvision:wide_resnet50_2'
    assert cli('summary', wrn, 4).stdout == cli('summary', wrn, 'layer1').stdout
    verbose = cli('summary', 'fastai:xresnet18', '--verbose').stdout
    assert verbose.rstrip('\n') == (GOLDEN / 'seed004_xresnet18_verbose.txt').read_text().rstrip('\n')


def test_summary_does_not_import_fastai():
    code = ("import sys; from fast_impl.app.cli import main; main(['summary', 'resnet18']); "
            "print('fastai' in sys.modules)")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert r.stdout.split()[-1] == 'False' and '(fc)' in r.stdout


def test_groups_with_decay_does_not_import_fastai():
    code = ("import sys; from fast_impl.app.cli import main; "
            "main(['groups', 'torchvision:resnet18', '--blocks', '--lr', '1e-3', '--decay', '0.5']); "
            "print('fastai' in sys.modules)")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert r.stdout.split()[-1] == 'False' and '| block 8 |' in r.stdout and '0.0005' in r.stdout


@pytest.mark.parametrize('args', [['--data', '/nonexistent'], ['--out', __file__], ['--device', 'gpu'],
                                  ['--epochs', '0']])
def test_train_checks_arguments_before_importing_fastai(args):
    code = ("import sys; from fast_impl.app.cli import main; "
            f"print(main(['train', 'fast_impl:ResNet18', *{args!r}]), 'fastai' in sys.modules)")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ['2', 'False'] and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_params_prints_seed_000_table():
    out = cli('params', 'fast_impl:Plain18Layer').stdout
    assert out.rstrip('\n') == (GOLDEN / 'seed000_plain18.txt').read_text().rstrip('\n')


def test_layers_formats():
    text = cli('layers', 'fast_impl:SimpleCNN', '--input', '1,3,32,32', '--depth', 2).stdout
    assert ('├─Conv2d (conv1)                         [3, 3]         [1, 32, 32, 32] 896            '
            '917,504') in text
    md = cli('layers', 'fast_impl:SimpleCNN', '--input', '1,3,32,32', '--format', 'markdown').stdout
    assert md.startswith('| ') and '917504' in md.replace(',', '')
    csv = cli('layers', 'fast_impl:SimpleCNN', '--input', '1,3,32,32', '--format', 'csv').stdout
    assert len(csv.strip().splitlines()) == 4 and 'conv1' in csv
    html = cli('layers', 'fast_impl:SimpleCNN', '--input', '1,3,32,32', '--format', 'html').stdout
    assert html.startswith('<')


def test_compare_equal_budget():
    out = cli('compare', 'fast_impl:Plain18Layer', 'fast_impl:Plain28Layer', '--input', '1,3,32,32').stdout
    assert out.count('685,656') == 2


def test_groups_with_lrs():
    out = cli('groups', 'torchvision:resnet18', '--lr', '1e-5:1e-3').stdout
    assert 'layer1' in out and 'fc' in out and '1e-05' in out and '0.001' in out
    out = cli('groups', 'convnext_atto', '--n', 3, '--lr', '1e-3', '--decay', 0.5).stdout
    assert '0.00025' in out and '0.001' in out
    assert 'layer3' in cli('groups', 'torchvision:resnet18', '--at', 'layer2,layer4').stdout


def test_groups_blocks_with_names_and_decay():
    out = cli('groups', 'torchvision:vit_b_16', '--blocks', '--lr', '1e-3', '--decay', 0.5).stdout
    rows = [l for l in out.splitlines() if l.startswith('|') and 'first module' not in l]
    assert len(rows) == 14 and 'Total params: 86,567,656 in 14 groups' in out
    assert rows[0].split('|')[2].strip() == 'stem' and rows[-1].split('|')[2].strip() == 'head'
    assert rows[-1].split('|')[3].strip() == 'encoder.ln' and rows[-1].split('|')[-2].strip() == '0.001'
    assert rows[-2].split('|')[2].strip() == 'block 12' and rows[-2].split('|')[-2].strip() == '0.0005'


def test_train_on_an_image_folder(tmp_path):
    from PIL import Image
    import numpy as np
    rng = np.random.default_rng(0)
    for split in ('train', 'valid'):
        for c in ('a', 'b'):
            (tmp_path / 'data' / split / c).mkdir(parents=True)
            for i in range(4):
                img = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
                img.save(tmp_path / 'data' / split / c / f'{i}.png')
    r = cli('train', 'fast_impl:ResNet18', '--data', tmp_path / 'data', '--epochs', 1, '--size', 32,
            '--out', tmp_path / 'out')  # 8 training images, fewer than the default batch of 64 (issue 11)
    assert '| fast_impl:ResNet18 |' in r.stdout
    assert r.stderr.strip() == ('fast-impl: warning: only 8 training images, fewer than the batch size 64: '
                                'batches of 8 instead')  # one line, no source file or line number
    assert (tmp_path / 'out' / 'train_curves.png').stat().st_size > 1000
    import pandas as pd
    df = pd.read_csv(tmp_path / 'out' / 'train_results.csv')
    assert list(df.columns[:3]) == ['arch', 'params', 'train_loss'] and np.isfinite(df.train_loss).all()


def test_every_command_has_help():
    assert 'commands:' in cli('--help').stdout
    for c in ['summary', 'layers', 'params', 'compare', 'groups', 'train', 'demo']:
        assert f'usage: fast-impl {c}' in cli(c, '--help').stdout
    assert '--bs' in cli('train', '--help').stdout


@pytest.mark.parametrize('args,msg', [
    (['summary', 'resnt50'], "unknown arch 'resnt50'"),
    (['summary', 'torchvision:resnet18', 12], 'index 12 is out of range'),
    (['summary', 'torchvision:resnet18', 'layer9'], "no child named 'layer9'"),
    (['layers', 'fast_impl:SimpleCNN', '--input', '1,3,x'],
     '--input must be comma-separated positive integers'),
    (['layers', 'fast_impl:SimpleCNN', '--depth', 'q'], "invalid int value: 'q'"),
    (['layers', 'fast_impl:SimpleCNN', '--format', 'pdf'], 'invalid choice'),
    (['groups', 'torchvision:resnet18', '--n', 2, '--stages'],
     'give one of --stages, --blocks, --n N, --at PATHS'),
    (['groups', 'torchvision:resnet18', '--lr', 'fast'], '--lr must be LO:HI or HI'),
    (['train', 'fast_impl:ResNet18', '--data', '/nonexistent'], 'needs train/ and valid/ subfolders'),
    (['frobnicate'], "unknown command 'frobnicate'"),
])
def test_bad_input_is_one_line_and_status_2(args, msg):
    r = cli(*args, ok=False)
    assert r.returncode == 2 and r.stdout == ''
    assert len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr


def test_demo_quick_writes_table_and_plot(tmp_path):
    out = cli('demo', '--quick', '--out', tmp_path).stdout
    for part in ['1. The model', '2. Pretraining on digits 0-4', '3. Its layer groups',
                 '4. Fine-tuning on digits 5-9', '| fast_impl stage groups + layer decay 0.75 | 6 |',
                 f'plot written to: {tmp_path / "transfer.png"}']:
        assert part in out
    assert (tmp_path / 'transfer.png').stat().st_size > 10_000
    rows = [l for l in (tmp_path / 'results.md').read_text().splitlines() if l.startswith('| ')]
    assert len(rows) == 8  # header, rule, 6 methods
    head = '| accuracy (mean ± std) | vs best baseline (± std error) | verdict | min |'
    assert head in rows[0] and rows[0] in out and 'one seed gives no standard error, so no verdict' in out
    cells = [[c.strip() for c in r.split('|')[1:-1]] for r in rows[2:]]
    assert sorted(c[5] for c in cells).count('best baseline') == 1  # one seed: no error, no verdict
    assert all(c[5] in ('best baseline', 'n/a') and c[4].endswith('± n/a') for c in cells)


def test_demo_verdict_on_made_up_numbers():
    from fast_impl.app.demo import paired, table, verdict
    assert paired([0.5, 0.7, 0.9], [0.4, 0.5, 0.6]) == pytest.approx((0.2, 0.1 / 3 ** 0.5))
    assert [verdict(d, 0.5) for d in (1.01, 0.99, 0, -0.99, -1.01)] == ['win', 'tie', 'tie', 'tie', 'worse']
    assert verdict(0.3, 0.0) == 'win' and verdict(0.0, 0.0) == 'tie' and verdict(5, float('nan')) == 'n/a'
    with pytest.raises(ValueError, match='as many'): paired([1, 2], [1, 2, 3])
    res = {'base a': dict(acc=[.60, .62, .64, .61], time=[1] * 4, groups=1, lr=1e-3),
           'base b': dict(acc=[.70, .74, .69, .75], time=[1] * 4, groups=1, lr=1e-3),
           'noisy': dict(acc=[.80, .66, .77, .70], time=[2] * 4, groups=4, lr=1e-2),  # +1.2 within noise
           'steady': dict(acc=[.72, .76, .71, .77], time=[2] * 4, groups=4, lr=1e-2)}  # +2.0 every seed
    rows = {r.split(' | ')[0][2:]: r.split(' | ') for r in table(res, ['base a', 'base b']).splitlines()[2:6]}
    assert rows['noisy'][4:6] == ['+1.2 ± 4.5', 'tie'] and rows['steady'][4:6] == ['+2.0 ± 0.0', 'win']
    assert rows['base a'][4:6] == ['-10.2 ± 1.9', 'worse'] and rows['base b'][5] == 'best baseline'
    note = table(res, ['base a', 'base b']).splitlines()[-1]
    assert note.endswith('4 seeds, ± its standard error; win or worse beyond two standard errors, else tie')


@pytest.mark.parametrize('args,msg', [
    (['layers', 'fast_impl:SimpleCNN', '--input', '1,4,32,32'],
     "forward pass on meta failed in module 'conv1' (Conv2d)"),
    (['layers', 'fast_impl:SimpleCNN', '--input', '0,3,32,32'],
     '--input must be comma-separated positive integers'),
    (['summary', 'fast_impl:VGG_CFGS'], "unknown arch 'fast_impl:VGG_CFGS'"),
])
def test_input_the_model_cannot_take_is_one_line(args, msg):
    r = cli(*args, ok=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr


def test_groups_lr_for_a_single_group_is_the_upper_end():
    from fast_impl.app.cli import _lrs, _rates
    assert _lrs(1, _rates('1e-5:1e-3', None)) == [1e-3]  # as fastai gives slice(lo, hi) to a single group
    assert _lrs(3, _rates('1e-5:1e-3', None)) == pytest.approx([1e-5, 1e-4, 1e-3])


def test_train_prints_each_warning_once(tmp_path):
    r = cli('train', 'fast_impl:Plain18Layer', 'torchvision:resnet18', '--epochs', 1, '--limit', 2,
            '--size', 16, '--lr', '1e-2:1e-4', '--out', tmp_path)
    lines = r.stderr.strip().splitlines()
    assert all(l.startswith('fast-impl: warning: ') for l in lines) and len(set(lines)) == len(lines), lines
    assert sum('is reversed' in l for l in lines) == 1 and sum('batches of 20' in l for l in lines) == 1


def test_a_warning_repeated_by_any_caller_prints_once(monkeypatch, capsys):
    import warnings
    from fast_impl.app import cli as app

    def noisy():
        "Warn the same twice from two lines, the filters changed in between (which resets Python's own once)"
        warnings.warn('the same words\nsecond line')
        with warnings.catch_warnings(): warnings.simplefilter('ignore')
        warnings.warn('the same words')
        warnings.warn('other words', RuntimeWarning)
    monkeypatch.setitem(app.COMMANDS, 'noisy', noisy)
    assert app.main(['noisy']) == 0
    assert capsys.readouterr().err.splitlines() == ['fast-impl: warning: the same words',
                                                    'fast-impl: warning: other words']
