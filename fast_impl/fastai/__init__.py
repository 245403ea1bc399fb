"""fastai integration, the only place importing fastai: discriminative Learners (`discriminative_learner`),
their layer-group reports and callbacks (`learn.show_groups()`, `GroupStats`, gradual unfreezing),
DataLoaders of the digits, image folders and CIFAR-10, and models with a new classifier. Importing it patches
fastai's `Learner` with `show_groups`, `plot_groups`, `plot_group_stats` and `n_groups`."""
from __future__ import annotations

__all__ = ['discriminative_learner', 'DiscriminativeLearner', 'group_labels', 'GroupStats', 'digits_dls',
           'folder_dls', 'cifar10_dls', 'cifar10_path', 'add_norm', 'build_model', 'classifier_name',
           'set_classifier', 'load_body', 'arch_stats', 'xresnet', 'xresnet18_half', 'AutoRGN']

from .models import arch_stats, build_model, classifier_name, load_body, set_classifier
from .xresnet import xresnet, xresnet18_half
from .data import add_norm, cifar10_dls, cifar10_path, digits_dls, folder_dls
from .learner import DiscriminativeLearner, discriminative_learner, group_labels
from .callbacks import GroupStats
from .rgn import AutoRGN
