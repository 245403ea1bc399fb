"`input_data=`: models not fed one image tensor split, summarise and train with groups in forward order."
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fast_impl import layer_summary, param_groups, split_blocks, split_n, split_stages
from fast_impl.split import check_groups, first_use_order, group_names, order_violations, plan


class TwoInputs(nn.Module):
    "An image and a metadata vector, fused after pooling; registered head first, the metadata branch next"
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(32 + 8, 3)
        self.meta = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.stem = nn.Sequential(nn.Conv2d(2, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())

    def forward(self, img, meta):
        x = self.stage2(self.stem(img)).mean((2, 3))
        return self.head(torch.cat([x, self.meta(meta)], 1))


class DictInputs(nn.Module):
    "Keyword inputs, as Hugging Face models take them: `pixel_values` and a `mask` of the same size"
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(4, 8, 4, 4)
        conv = lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GELU())
        self.blocks = nn.Sequential(*[conv() for _ in range(3)])
        self.head = nn.Linear(8, 2)

    def forward(self, pixel_values, mask):
        return self.head(self.blocks(self.embed(pixel_values * mask)).mean((2, 3)))


class Tokens(nn.Module):
    "Integer token ids: an embedding and a position table, two encoder layers, a final norm and a classifier"
    def __init__(self, vocab=50, d=16, n=12):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(1, n, d))
        layer = lambda: nn.TransformerEncoderLayer(d, 2, 32, batch_first=True)
        self.layers = nn.ModuleList([layer() for _ in range(2)])
        self.norm, self.fc = nn.LayerNorm(d), nn.Linear(d, 4)

    def forward(self, ids):
        x = self.tok(ids) + self.pos
        for layer in self.layers: x = layer(x)
        return self.fc(self.norm(x).mean(1))


CASES = {'tuple': (TwoInputs, lambda: (torch.randn(2, 2, 16, 16), torch.randn(2, 5))),
         'dict': (DictInputs, lambda: {'pixel_values': torch.randn(2, 4, 16, 16),
                                       'mask': torch.ones(2, 4, 16, 16)}),
         'ints': (Tokens, lambda: torch.randint(0, 50, (2, 12)))}


@pytest.mark.parametrize('case', list(CASES))
def test_splits_follow_the_forward_order_of_the_inputs_given(case):
    "Every split takes `input_data`: no fallback warning, a partition, the groups in forward order"
    make, data = CASES[case]
    m, x = make(), data()
    order = first_use_order(m, input_data=x)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for gs in (split_stages(m, input_data=x), split_blocks(m, input_data=x), split_n(m, 2, input_data=x)):
            check_groups(m, gs)
            assert order_violations(m, gs, order) == []
    names = group_names(m, split_stages(m, input_data=x))
    assert names[0][0] == order[0] and order[-1] in names[-1]  # the first used first, the classifier last


def test_two_inputs_stem_and_head():
    "The image stem comes first although registered last; the fusion head is the last group"
    m, x = TwoInputs(), CASES['tuple'][1]()
    names = group_names(m, split_stages(m, input_data=x))
    assert names[0][:2] == ['stem.0.weight', 'stem.0.bias'] and names[-1][-2:] == ['head.weight', 'head.bias']


def test_token_ids_embeddings_in_the_stem():
    "Integer inputs: the embeddings and the position table are the stem, each encoder layer whole in a block"
    m, x = Tokens(), CASES['ints'][1]()
    names = group_names(m, split_blocks(m, input_data=x))
    assert set(names[0]) == {'tok.weight', 'pos'}
    for i in range(2):  # a layer is never cut across groups
        assert sum(any(n.startswith(f'layers.{i}.') for n in g) for g in names) == 1
    assert names[-1][-2:] == ['fc.weight', 'fc.bias']


def test_no_pass_warning_gives_advice_that_works():
    "Without inputs no pass runs: the warning names input_data=, and following it splits without a warning"
    m = TwoInputs()
    with pytest.warns(UserWarning, match=r"split_stages\(model, input_data=torch.randn"):
        split_stages(m)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        split_stages(m, input_data=CASES['tuple'][1]())


def test_param_groups_takes_what_the_splits_take():
    "param_groups: input_data=, a Plan; a name gets one line saying to build the model first"
    m, x = TwoInputs(), CASES['tuple'][1]()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        pg = param_groups(m, 1e-3, input_data=x)
        pp = param_groups(plan(m, input_data=x), 1e-3)
    assert [g['name'] for g in pg] == [g['name'] for g in pp] and pg[0]['name'] == 'stem'
    assert [[id(p) for p in g['params']] for g in pg] == [[id(p) for p in g['params']] for g in pp]
    torch.optim.AdamW(pg)
    with pytest.raises(TypeError, match="build it first"): param_groups('resnet18', 1e-3)
    with pytest.raises(ValueError, match="made already"):
        param_groups(plan(m, input_data=x), 1e-3, head='head')


def test_layer_summary_with_keyword_and_integer_inputs():
    "layer_summary takes the same inputs: a dict of keyword inputs, integer token ids"
    s = layer_summary(DictInputs(), input_data=CASES['dict'][1]())
    assert s.total_params == sum(p.numel() for p in DictInputs().parameters()) and s.total_mult_adds > 0
    t = layer_summary(Tokens(), input_data=CASES['ints'][1](), depth=1)
    assert t.output_shapes == [[2, 4]]


def test_missing_inputs_name_input_data():
    "A model fed several inputs, summarised without them: the error says to give input_data="
    from fast_impl.forward import ForwardError
    with pytest.raises(ForwardError, match="TwoInputs takes other inputs than one tensor: give input_data="):
        layer_summary(TwoInputs())


def test_bad_input_data_is_one_line():
    with pytest.raises(TypeError, match="input_data must be a tensor, a tuple"):
        layer_summary(Tokens(), input_data='ids')
    with pytest.raises(TypeError, match="input_data must be a tensor, a tuple"):
        split_stages(Tokens(), input_data=[1, 2, 3])


def test_discriminative_learner_orders_groups_on_a_batch_of_its_data():
    "The default example input is one batch of the DataLoaders: a model that only takes their size splits"
    from fast_impl import digits_dls, discriminative_learner
    dls = digits_dls(classes=range(3), n_per_class=4, size=12, bs=4)

    class Fixed(nn.Module):  # takes 12x12 images only: its flattened features feed a sized Linear
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Flatten())
            self.fc = nn.Linear(4 * 12 * 12, 3)

        def forward(self, x): return self.fc(self.body(x))

    with warnings.catch_warnings():
        warnings.simplefilter('error')
        learn = discriminative_learner(dls, Fixed(), groups='stages')
    names = [n for n, _ in learn.layer_groups()]  # warnings are errors above: the pass ran on the batch
    assert names == ['stage 1', 'head'] and learn._input_data.shape[-2:] == (12, 12)
