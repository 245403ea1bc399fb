"fastai Learners with block groups, GroupStats and gradual unfreezing; groups split once per Learner."
from __future__ import annotations

import pytest
import torch

from fastai.callback.core import Callback
from fastai.optimizer import SGD

from fast_impl.fastai import discriminative_learner
from test_learner import Toy, synth_dls, warnings_as_errors  # (it sets one torch thread)


def test_blocks_learner_and_group_names():
    learn = discriminative_learner(synth_dls(), Toy(), groups='blocks')
    df = learn.show_groups().to_df()
    assert df['name'].tolist() == [f'block {i}' for i in range(1, 6)] + ['head'] and learn.n_groups == 6
    with pytest.raises(ValueError, match="did you mean 'blocks'"):
        discriminative_learner(synth_dls(), Toy(), groups='block')


def test_group_stats_records_every_step_and_group():
    from fast_impl import GroupStats
    learn = discriminative_learner(synth_dls(n_train=8), Toy(), groups=3, cbs=GroupStats(),
                                   opt_func=SGD)
    learn.fit(2, lr=[1e-3, 1e-2, 1e-1])
    df = learn.group_stats.df
    assert list(df.columns) == ['step', 'group', 'name', 'lr', 'grad_norm', 'update_ratio']
    assert len(df) == 4 * 3  # 2 epochs x 2 batches
    assert df['name'].tolist()[:3] == ['group 1', 'group 2', 'head']
    assert df.lr.tolist()[:3] == [1e-3, 1e-2, 1e-1]
    assert (df.grad_norm > 0).all() and (df.update_ratio > 0).all()
    # SGD without momentum: the update is lr * grad (wd 0.01 decoupled adds lr*wd*w): the ratio follows the lr
    r = df[df.step == 3].update_ratio.to_numpy()
    assert r[0] < r[1] < r[2]
    fig = learn.plot_group_stats()
    assert len(fig.axes) == 3 and len(fig.axes[0].lines) == 3
    learn.group_stats.reset()
    assert learn.group_stats.df.empty
    with pytest.raises(ValueError, match='cbs=GroupStats'):
        discriminative_learner(synth_dls(), Toy()).plot_group_stats()


def test_gradual_unfreeze_phases_from_the_top():
    from fast_impl import GroupStats
    logs = []
    learn = discriminative_learner(synth_dls(), Toy(), groups=3, cbs=GroupStats())
    learn.logger = lambda *a: logs.append(' '.join(map(str, a)))
    body = learn.model.stem[0].weight
    w0 = body.detach().clone()
    seen = []

    class Phase(Callback):
        def before_fit(self):
            seen.append((self.opt.frozen_idx, [any(p.requires_grad for p in g if p.ndim > 1)
                                               for g in self.opt.param_lists]))
    learn.add_cb(Phase())
    with warnings_as_errors():  # frozen groups with per-group rates are meant here: no warning
        learn.gradual_unfreeze(epochs=1, lr_max=1e-2, decay=0.5)
    # the head, then one more group each phase, ending unfrozen
    assert seen == [(2, [False, False, True]), (1, [False, True, True]), (0, [True, True, True])]
    phases = [l for l in logs if l.startswith('gradual unfreezing')]
    assert phases == ['gradual unfreezing, phase 1/3: training 1 of 3 groups (head)',
                      'gradual unfreezing, phase 2/3: training 2 of 3 groups (group 2 .. head)',
                      'gradual unfreezing, phase 3/3: training 3 of 3 groups (group 1 .. head)']
    assert not torch.equal(body, w0) and learn.opt.frozen_idx == 0
    df = learn.group_stats.df
    assert df.step.max() == 2
    assert df[df.step == 0].grad_norm.isna().tolist() == [False, False, False]  # norms train


def test_gradual_unfreeze_bad_input_changes_nothing():
    learn = discriminative_learner(synth_dls(), Toy(), groups=1)
    with pytest.raises(ValueError, match='needs 2 or more layer groups.*has 1'): learn.gradual_unfreeze()
    learn = discriminative_learner(synth_dls(), Toy(), groups=3)
    learn.create_opt()
    w0 = [p.detach().clone() for p in learn.model.parameters()]
    for kw, match in [(dict(epochs=0), 'epochs must be'), (dict(step=0), 'step must be'),
                      (dict(epochs=[1, 1]), 'a list of 3 of them'),
                      (dict(lr_max=-1.0), 'lr must be a positive'),
                      (dict(decay=2.0), r'decay must be in \(0, 1\]')]:
        with pytest.raises(ValueError, match=match): learn.gradual_unfreeze(**kw)
        assert learn.opt.frozen_idx == 0 and all(p.requires_grad for p in learn.model.parameters())
    assert all(torch.equal(p, w) for p, w in zip(learn.model.parameters(), w0))  # nothing trained


def test_group_stats_given_to_one_fit():
    "fastai's way to pass a callback for one fit: the data stays in `gs`; both plots work"
    from fast_impl import GroupStats
    learn = discriminative_learner(synth_dls(n_train=8), Toy(), groups=3, opt_func=SGD)
    gs = GroupStats()
    learn.fit(1, lr=1e-2, cbs=gs)
    assert gs not in learn.cbs and not hasattr(learn, 'group_stats')  # fastai removed it after the fit
    assert len(gs.df) == 2 * 3 and gs.df['name'].tolist()[-3:] == ['group 1', 'group 2', 'head']
    assert len(gs.plot().axes) == 3 and len(learn.plot_group_stats().axes[0].lines) == 3
    learn.fit(1, lr=1e-2, cbs=gs)  # it runs on across fits
    assert gs.df.step.tolist()[-1] == 3
    with pytest.raises(ValueError, match='fit first'): GroupStats().plot()


def test_groups_split_once_per_learner(monkeypatch):
    "The groups are split and checked once: construction, n_groups, the optimizer and fits reuse them"
    import fast_impl.fastai.learner as L
    calls, real = [], L.named_groups
    monkeypatch.setattr(L, 'named_groups', lambda *a, **kw: calls.append(1) or real(*a, **kw))
    learn = discriminative_learner(synth_dls(), Toy(), groups=3)
    assert learn.n_groups == 3 and calls == [1]
    learn.freeze()
    learn.fit(1, lr=1e-3)
    assert calls == [1] and len(learn.opt.param_lists) == 3
    learn.splitter = L.splitter(2)  # a new splitter: split again, once
    learn.create_opt()
    learn.create_opt()
    assert calls == [1, 1] and len(learn.opt.param_lists) == 2
