"""Hugging Face `Trainer` callbacks over fast_impl's layer groups: `GroupMonitorCallback` adds each group's
learning rate (and gradient norm, update ratio) by name to the Trainer's logs; `GradualUnfreezingCallback` is
ULMFiT's schedule. The only module that imports transformers; both read the groups from an optimizer built
with `param_groups`: `Trainer(optimizers=(torch.optim.AdamW(param_groups(model, lr)), None))`."""
from __future__ import annotations

__all__ = ['GroupMonitorCallback', 'GradualUnfreezingCallback', 'monitor_groups']

import math, warnings

from transformers import TrainerCallback

from .checks import check_count
from .optim import GroupFreezer, GroupTracker, group_logs, layer_groups, warn_flattened


class GroupMonitorCallback(TrainerCallback):
    """Adds to each training log of a Hugging Face `Trainer` (`state.log_history`, the progress bar and the
    callbacks after it) the learning rate of every layer group by name (`lr/stem` ... `lr/head`; the Trainer's
    own `learning_rate` is group 0's, the stem's) and, with `stats=True`, the gradient norm and update ratio
    (`grad_norm/...`, `update_ratio/...`) of the last step before the log, recorded one step in `every`
    (default: the Trainer's `logging_steps`). `monitor_groups(trainer)` puts it before the reporters
    (TensorBoard, W&B) so that they get the keys too. Rates that `param_groups` made different and a
    scheduler made equal warn once."""

    def __init__(self, stats: bool = False, every: int | None = None):
        self.stats, self.every = stats, None if every is None else check_count(every, 'every')
        self.tracker, self._rows, self._lrs = GroupTracker(None), [], {}

    def on_train_begin(self, args, state, control, **kwargs):
        self._every = self.every or (state.logging_steps if args.logging_strategy == 'steps' else 1)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if not self.stats or (state.global_step + 1) % self._every: return
        self.tracker.opt, self.tracker.n = optimizer, state.global_step
        self.tracker.before(hypers=())  # the rates are checked when logged

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # the rates of the step just taken (the scheduler steps next), as the Trainer logs `learning_rate`
        self._lrs = {f'lr/{name}': lr for name, _, lr in layer_groups(optimizer.param_groups)}
        self._rows = self.tracker.after() or self._rows

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        if logs is None or 'learning_rate' not in logs or optimizer is None: return
        self.tracker.warned = warn_flattened(optimizer.param_groups, self.tracker.warned)
        new = {**self._lrs, **{k: v for k, v in group_logs(self._rows).items() if not k.startswith('lr/')}}
        self._rows = []
        logs.update(new)
        last = state.log_history[-1] if state.log_history else {}  # the Trainer stored a copy of `logs`
        if last.get('step') == state.global_step and 'learning_rate' in last: last.update(new)

    @property
    def df(self):
        "`step, group, name, lr, grad_norm, update_ratio` of the steps recorded with `stats=True`"
        return self.tracker.df


def monitor_groups(trainer, stats: bool = False, every: int | None = None) -> GroupMonitorCallback:
    "A `GroupMonitorCallback` put first among `trainer`'s callbacks, so every reporter logs its keys"
    cb = GroupMonitorCallback(stats, every)
    trainer.callback_handler.callbacks.insert(0, cb)
    return cb


class GradualUnfreezingCallback(TrainerCallback):
    """ULMFiT's gradual unfreezing for the Hugging Face `Trainer`: the head group trains first, then `step`
    more groups every `epochs_per_phase` epochs until every group trains, reading the layer groups from the
    optimizer that `param_groups` made. Frozen groups stay bit-for-bit unchanged."""

    def __init__(self, epochs_per_phase: int = 1, step: int = 1):
        self.epochs_per_phase = check_count(epochs_per_phase, 'epochs_per_phase')
        self.step, self.freezer = check_count(step, 'step'), None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        # One process: requires_grad=False (no gradient, no backward through frozen groups; why not a zero
        # rate: see fast_impl.lightning.GradualUnfreezing). Several processes (Accelerate's DDP, whatever
        # its find_unused_parameters): requires_grad stays and the frozen groups' gradients, the same on
        # every rank after the all-reduce, are dropped before each step (the Trainer clips gradients before
        # that hook, so the clipping norm counts them).
        self.freezer = GroupFreezer(optimizer, self.epochs_per_phase, self.step, model, args.world_size > 1)
        need = self.freezer.epochs_needed
        if args.max_steps <= 0 and args.num_train_epochs < need:
            warnings.warn(f"GradualUnfreezingCallback: {len(self.freezer.groups)} groups need "
                          f"num_train_epochs >= {need} for every group to train; got {args.num_train_epochs}",
                          stacklevel=2)
        self.freezer.set(math.floor(state.epoch or 0))

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.freezer.set(math.floor((state.epoch or 0) + 1e-6))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.freezer.drop_grads: self.freezer.drop()

    def on_train_end(self, args, state, control, **kwargs):
        self.freezer.restore()
