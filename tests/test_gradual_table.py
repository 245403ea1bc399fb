"Gradual unfreezing without a progress bar prints a labelled table per phase, never fastai's bare lists."
from __future__ import annotations

import re

import torch
from fastai.metrics import error_rate

from fast_impl.fastai import discriminative_learner

from test_learner import Toy, synth_dls

torch.set_num_threads(1)


def test_no_bar_prints_a_table_per_phase(capsys):
    learn = discriminative_learner(synth_dls(n_classes=3), Toy(n_out=3), groups=4, metrics=error_rate)
    with learn.no_bar(): learn.gradual_unfreeze(epochs=[2, 1], lr_max=1e-3, step=3)  # phases: head, then all
    lines = capsys.readouterr().out.splitlines()
    assert not [l for l in lines if l.startswith('[')]  # no bare `recorder.log` list
    head = 'epoch      train_loss  valid_loss  error_rate  time'
    assert lines[0] == 'gradual unfreezing, phase 1/2: training 1 of 4 groups (head)' and lines[1] == head
    assert lines[4] == 'gradual unfreezing, phase 2/2: training 4 of 4 groups (group 1 .. head)'
    assert lines[5] == head and len(lines) == 7
    row = r'{}\s+\d+\.\d{{6}}\s+\d+\.\d{{6}}\s+\d\.\d{{6}}\s+\d\d:\d\d'
    assert all(re.fullmatch(row.format(e), lines[i]) for i, e in ((2, 0), (3, 1), (6, 0))), lines
    assert learn.logger is print  # restored after each phase


def test_an_own_logger_is_left_alone(capsys):
    learn = discriminative_learner(synth_dls(), Toy(), groups=2)
    seen = []
    learn.logger = seen.append
    with learn.no_bar(): learn.gradual_unfreeze(epochs=1)
    assert [type(x).__name__ for x in seen] == ['str', 'L', 'str', 'L'] and capsys.readouterr().out == ''
