"A new classifier only where the output does not fit the classes: else the model trains as it is."
from __future__ import annotations

import pytest
import torch
from torch import nn

from fast_impl.fastai import build_model, discriminative_learner
from fast_impl.fastai.models import fits, output_shapes

from test_learner import synth_dls

torch.set_num_threads(1)


def pooled(n_out: int) -> nn.Sequential:
    "A conv net whose last layer is a conv to `n_out` channels, pooled: no Linear anywhere"
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, n_out, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Tagged(nn.Module):
    "A model with a Linear classifier, built for `classes` classes (the builder argument `classes`)"
    def __init__(self, classes: int = 5):
        super().__init__()
        self.body, self.out = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), \
            nn.Linear(4, classes)

    def forward(self, x): return self.out(self.body(x))


def test_output_shapes_from_a_meta_pass():
    m = pooled(3)
    assert output_shapes(m, torch.rand(2, 3, 16, 16)) == [[2, 3]]
    assert all(not p.is_meta for p in m.parameters())  # the pass ran on a copy
    assert fits([[7, 3]], 3) and not fits([[7, 3]], 4) and not fits([[7, 3, 1, 1]], 3) and not fits(None, 3)
    assert not fits([[7, 3], [7, 3]], 3)  # several outputs (auxiliary heads) are not one set of scores


@pytest.mark.parametrize('n', [3, 4])
def test_a_model_that_fits_trains_as_it_is(n):
    m = pooled(n)
    weights = [p.clone() for p in m.parameters()]
    learn = discriminative_learner(synth_dls(n_classes=n), m, groups=2)
    assert learn.model is m and all(torch.equal(a, b) for a, b in zip(weights, m.parameters()))
    learn.fit(1, 1e-3)
    assert learn.model(torch.rand(2, 3, 32, 32)).shape == (2, n)


def test_linear_kept_when_it_fits_swapped_when_not():
    kept = build_model(Tagged, 2, input_data=torch.rand(2, 3, 8, 8))  # built for 5 classes: swapped
    assert kept.out.out_features == 2
    m = Tagged(classes=2)
    w = m.out.weight.clone()
    assert torch.equal(build_model(m, 2).out.weight, w)  # fits: the trained head stays


def test_builder_n_out_when_no_classifier():
    from fast_impl.models import Plain28Layer
    m = build_model(Plain28Layer, 6, input_data=torch.rand(2, 3, 32, 32))
    assert isinstance(m[-1], nn.Linear) and m(torch.rand(1, 3, 32, 32)).shape == (1, 6)


def test_no_head_to_give_is_one_line():
    with pytest.raises(ValueError) as e: discriminative_learner(synth_dls(n_classes=2), pooled(5), groups=2)
    msg = str(e.value)
    assert '\n' not in msg and 'gives an output of shape [4, 5], not scores for 2 classes' in msg
    assert msg.endswith('has no Linear classifier to replace nor a num_classes=/n_out= argument: give it a '
                        'head that ends in 2 outputs (nn.Linear)')
    maps = nn.Sequential(nn.Conv2d(3, 2, 3))  # a feature map, even with the right channel count
    with pytest.raises(ValueError, match=r'an output of shape \[4, 2, 30, 30\], not'):
        discriminative_learner(synth_dls(n_classes=2), maps, groups=1)


def test_fine_tuning_gets_a_new_classifier_even_when_it_fits(tmp_path):
    src, path = Tagged(), tmp_path / 'w.pth'  # 5 classes, as the data below
    torch.save(src.state_dict(), path)
    m = build_model(Tagged, 5, pretrained=path, input_data=torch.rand(2, 3, 8, 8))
    assert torch.equal(m.body[0].weight, src.body[0].weight) and not torch.equal(m.out.weight, src.out.weight)
    from fast_impl.models import Plain18Layer  # no head: built with one (n_out=), the file's body in it
    src = Plain18Layer(n_out=3)
    torch.save(src.state_dict(), path)
    m = build_model(Plain18Layer, 4, pretrained=path, input_data=torch.rand(2, 3, 16, 16))
    assert torch.equal(m[0].weight, src[0].weight) and m[-1].out_features == 4
    torch.save(pooled(5).state_dict(), path)
    with pytest.raises(ValueError, match='fine-tuning pretrained weights gives it a new classifier for 5 '
                                         'classes, but it has no Linear'):
        build_model(lambda: pooled(5), 5, pretrained=path)
