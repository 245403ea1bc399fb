"One input-size guess for every pass: the rank and channels a model takes; one line naming the input to give."
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fast_impl import layer_summary, resolve, split_stages
from fast_impl.forward import ForwardError
from fast_impl.inputs import input_sizes


class Gray(nn.Module):
    "A one-channel CNN (MNIST-like): an RGB guess fails, its own channels work"
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Conv2d(4, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 10)

    def forward(self, x): return self.fc(self.body(x))


class Video(nn.Module):
    "A 3-d conv net: five-dimensional input (batch, channels, frames, height, width)"
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv3d(2, 4, 3, 2, 1), nn.Linear(4, 3)

    def forward(self, x): return self.fc(self.conv(x).mean((2, 3, 4)))


class Signal(nn.Module):
    "A 1-d conv net over a 6-channel signal"
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv1d(6, 8, 5, 2), nn.Linear(8, 2)

    def forward(self, x): return self.fc(self.conv(x).mean(2))


class Recurrent(nn.Module):
    "A GRU over (time, batch, features) sequences, then a classifier"
    def __init__(self):
        super().__init__()
        self.gru, self.fc = nn.GRU(5, 8), nn.Linear(8, 2)

    def forward(self, x): return self.fc(self.gru(x)[0][-1])


@pytest.mark.parametrize('make, rank, channels',
                         [(Gray, 4, 1), (Video, 5, 2), (Signal, 3, 6), (Recurrent, 3, 5)])
def test_summary_and_split_take_the_models_own_rank(make, rank, channels):
    "Without an input size, layer_summary and split_stages run on the rank and channels the model takes"
    s = layer_summary(make())
    (shape,) = s.input_shapes
    assert len(shape) == rank and channels in shape[1:]
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no fallback to registration order: the pass ran
        assert split_stages(make())
    assert any(len(x) == rank for x in input_sizes(make()))


def test_wrong_rank_names_the_input_to_give():
    "A pass that fails on the given size says which size (and --input) to give instead"
    with pytest.raises(ForwardError, match=r"Signal may take \[1, 6, 224\]: give input_size=\(1, 6, 224\), "
                                           r"or --input 1,6,224 on the command line"):
        layer_summary(Signal(), input_size=(1, 6, 32, 32))


def test_cli_layers_on_a_video_model_without_input():
    "The CLI's `layers` guesses the video input as `groups` does"
    from fast_impl.app.cli import main
    assert main(['layers', 'torchvision:r3d_18', '--depth', '0']) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a CUDA GPU')
def test_cuda_without_a_gpu_is_one_line():
    with pytest.raises(ValueError, match="device 'cuda' is not available on this machine"):
        resolve('resnet18', device='cuda')
