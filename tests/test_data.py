"scikit-learn digits as tensors and fastai DataLoaders: shapes, class picks, per-class counts, seeds, errors."
from __future__ import annotations

import subprocess, sys

import numpy as np
import pytest
import torch

from fast_impl.fastai.data import digits_dls
from fast_impl.images import digits_images, pick_per_class


def test_images():
    x, y = digits_images(range(5), size=32)
    assert x.shape == (len(y), 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and sorted(set(y.tolist())) == [0, 1, 2, 3, 4]
    assert torch.equal(x[:, 0], x[:, 2])  # grey, repeated over channels
    x8, y8 = digits_images([7], size=8, n_channels=1)
    assert x8.shape[1:] == (1, 8, 8) and set(y8.tolist()) == {7}


def test_dls_few_per_class():
    dls = digits_dls([5, 6, 7, 8, 9], n_per_class=10, bs=16, seed=3)
    assert dls.c == 5 and list(dls.vocab) == [5, 6, 7, 8, 9]
    ys = [int(y) for _, y in dls.train_ds]
    assert len(ys) == 50 and np.bincount(ys).tolist() == [10] * 5
    _, yall = digits_images([5, 6, 7, 8, 9])
    assert len(dls.valid_ds) == len(yall) - 50
    xb, yb = dls.one_batch()
    assert xb.shape == (16, 3, 32, 32) and type(xb).__name__ == 'TensorImage' and yb.max() < 5


def test_seeds():
    _, y = digits_images(range(10))
    a, b, c = (pick_per_class(y, 5, s) for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(y[a].numpy()).tolist() == [5] * 10


def test_random_split():
    dls = digits_dls(range(3), valid_pct=0.25, bs=8)
    n = len(digits_images(range(3))[1])
    assert len(dls.valid_ds) == round(0.25 * n) and len(dls.train_ds) + len(dls.valid_ds) == n


def test_errors():
    with pytest.raises(ValueError, match='digits 0-9'): digits_dls([3, 12])
    with pytest.raises(ValueError, match='n_per_class'): digits_dls([1], n_per_class=1000)
    with pytest.raises(ValueError, match='size'): digits_images(size=4)


def test_import_has_no_fastai():
    code = ("import sys, fast_impl.images, fast_impl.enums, fast_impl.app.plan, fast_impl.app.train; "
            "assert 'fastai' not in sys.modules, 'fastai imported'")
    subprocess.run([sys.executable, '-c', code], check=True)


def _folder(root, bad: dict[str, bytes]):
    "An image folder (2 classes, 3 images each in train/ and valid/), images in several modes, plus `bad`"
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ('train', 'valid'):
        for c, mode in (('a', 'L'), ('b', 'RGBA')):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                px = (rng.random((12, 12, 4)) * 255).astype('uint8')
                Image.fromarray(px, 'RGBA').convert(mode).save(root / split / c / f'{i}.png')
    for name, data in bad.items(): (root / name).write_bytes(data)
    return root


def test_unreadable_images_one_line(tmp_path):
    from fast_impl.fastai.data import folder_dls
    good = _folder(tmp_path / 'good', {})
    assert folder_dls(good, size=8, bs=2).one_batch()[0].shape == (2, 3, 8, 8)  # L and RGBA read as RGB
    png = (good / 'train/a/0.png').read_bytes()
    flipped = png[:40] + bytes([png[40] ^ 0xFF]) + png[41:]  # a PNG chunk whose CRC no longer matches
    bad = {'train/a/empty.png': b'', 'valid/b/notes.gif': b'GIF? no, text', 'train/b/crc.png': flipped,
           'valid/a/half.bmp': png[:30], 'train/a/x.tiff': b'II*\x00' + b'\x00' * 8}
    root = _folder(tmp_path / 'bad', bad)
    with pytest.raises(ValueError) as e: folder_dls(root, size=8, bs=2)
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith(f'5 of 17 image files in {root} cannot be read')
    assert str(root / 'train/a/empty.png') in msg and msg.endswith('and 2 more; remove or replace them')
    with pytest.raises(ValueError, match='1 of 13 .*/train/a/x.tiff; remove'): folder_dls(_folder(
        tmp_path / 'one', {'train/a/x.tiff': bad['train/a/x.tiff']}), size=8, bs=2)


def test_image_cut_short_is_one_line_when_decoded(tmp_path):
    "A JPEG cut short passes PIL's verify (no pixels read): decoding it in a batch names it"
    import io
    from PIL import Image
    from fast_impl.fastai.data import folder_dls
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype('uint8')).save(buf, 'JPEG')
    root = _folder(tmp_path, {'valid/b/cut.jpeg': buf.getvalue()[:len(buf.getvalue()) // 2]})
    dls = folder_dls(root, size=8, bs=8)
    with pytest.raises(ValueError, match=r'^\S+/valid/b/cut.jpeg cannot be decoded as an image \(image file '
                                         r'is truncated.*; remove or replace it$'):
        list(dls.valid)
