"""Lightning callbacks over fast_impl's layer groups: `GroupMonitor` logs each group's learning rate, gradient
norm and update ratio by name; `GradualUnfreezing` is ULMFiT's schedule, also under DDP; `AutoRGN` sets each
group's rate from its gradients every step. The only module that imports Lightning; all read the groups from
an optimizer built with `param_groups`."""
from __future__ import annotations

__all__ = ['GroupMonitor', 'GradualUnfreezing', 'AutoRGN']

import math, warnings

from lightning.pytorch.callbacks import Callback
from torch.nn.parallel import DistributedDataParallel

from .checks import check_count
from .enums import choice
from .optim import GroupFreezer, GroupTracker, group_logs
from .rgn import RGN, Per, RGNScaler


class GroupMonitor(Callback):
    """Logs, per layer group and by its name, the learning rate (`lr/stem` ... `lr/head`), the gradient norm
    (`grad_norm/...`) and ||update|| / ||weight|| (`update_ratio/...`) through the LightningModule's logger
    (`self.log_dict`: CSVLogger, TensorBoard, W&B), one optimizer step in `every` (default: the Trainer's
    `log_every_n_steps`, the steps Lightning writes). Frozen groups log their rate only. `monitor.df` keeps
    every recorded row. Rates that `param_groups` made different and a scheduler made equal warn once."""

    def __init__(self, every: int | None = None):
        self.every = None if every is None else check_count(every, 'every')
        self.tracker = GroupTracker(None)

    def on_fit_start(self, trainer, pl_module):
        logs = trainer.log_every_n_steps
        if self.every and logs and self.every % logs:
            warnings.warn(f"GroupMonitor(every={self.every}) records steps that "
                          f"Trainer(log_every_n_steps={logs}) does not write; pass "
                          f"Trainer(log_every_n_steps={self.every})", stacklevel=2)
        self._every = self.every or logs

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        # Lightning writes step logs when (batches stepped + 1) % log_every_n_steps == 0; with one optimizer
        # that count is trainer.global_step here, before the step
        if not self._every or (trainer.global_step + 1) % self._every: return
        self.tracker.opt, self.tracker.n = optimizer, trainer.global_step
        self.tracker.before()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        rows = self.tracker.after()
        if rows: pl_module.log_dict(group_logs(rows), on_step=True, on_epoch=False)

    @property
    def df(self):
        "`step, group, name, lr, grad_norm, update_ratio`: one row per recorded step and layer group"
        return self.tracker.df

    def plot(self, figsize=(11, 3)):
        "The recorded statistics per group against the step, coloured stem to head; the Figure"
        return self.tracker.plot(figsize)


class GradualUnfreezing(Callback):
    """ULMFiT's gradual unfreezing: the head group trains first, then `step` more groups every
    `epochs_per_phase` epochs, from the head down, until every group trains (after `epochs_per_phase` x
    phases epochs; fewer `max_epochs` warn). The layer groups are the optimizer's, as `param_groups` made
    them (their `group`/`name` keys). Frozen groups stay bit-for-bit unchanged, also under DDP."""

    def __init__(self, epochs_per_phase: int = 1, step: int = 1):
        self.epochs_per_phase = check_count(epochs_per_phase, 'epochs_per_phase')
        self.step = check_count(step, 'step')
        self.freezer = None

    def on_fit_start(self, trainer, pl_module):
        # Freeze with requires_grad=False, not a zero learning rate: a scheduler rewrites every group's lr
        # each step (OneCycleLR, LambdaLR), Adam's moments would still gather the frozen gradients, and the
        # backward pass would still run through the frozen stem. Without a gradient, torch optimizers skip a
        # parameter: it stays bit-for-bit unchanged, weight decay included.
        # DDP builds its reducer once, when Lightning wraps the model (before this hook), expecting a gradient
        # for every parameter that required one then: all of them, since we freeze only now, so the groups
        # unfrozen later are all-reduced (freezing in setup(), before the wrap, as BaseFinetuning does, leaves
        # them out of the reducer for good). A parameter frozen after the wrap gives no gradient, which DDP
        # accepts only with find_unused_parameters=True (it then marks it ready and leaves .grad None on every
        # rank). Without it (Lightning's 'ddp', 'ddp_spawn'), requires_grad stays True and the frozen groups'
        # gradients, identical on every rank after the all-reduce, are dropped after backward: the optimizer
        # skips them all the same, at the cost of their backward pass.
        ddp = trainer.strategy.model
        drop = isinstance(ddp, DistributedDataParallel) and not ddp.find_unused_parameters
        self.freezer = GroupFreezer(trainer.optimizers[0], self.epochs_per_phase, self.step, pl_module, drop)
        need, have = self.freezer.epochs_needed, trainer.max_epochs
        if have is not None and 0 < have < need:
            warnings.warn(f"GradualUnfreezing: {len(self.freezer.groups)} groups need max_epochs >= {need} "
                          f"for every group to train; Trainer(max_epochs={have}) stops before", stacklevel=2)
        self.freezer.set(trainer.current_epoch)

    def on_train_epoch_start(self, trainer, pl_module):
        self.freezer.set(trainer.current_epoch)

    def on_after_backward(self, trainer, pl_module):
        if self.freezer.drop_grads: self.freezer.drop()

    def on_fit_end(self, trainer, pl_module):
        self.freezer.restore()

    def on_exception(self, trainer, pl_module, exception):
        if self.freezer is not None: self.freezer.restore()


class AutoRGN(Callback):
    """Auto-RGN (Lee et al., ICLR 2023) in Lightning: before every optimizer step, each layer group's rate is
    the rate your scheduler set for the step times the group's ||grad|| / ||w|| divided by the largest, for
    that step only (`fast_impl.rgn.RGNScaler`: the scheduled rates are back after `optimizer.step()`, so the
    factor never compounds and the scheduler never sees it). Frozen groups (no gradient, rate 0) are skipped.
    `per='tensor'`: the paper's one factor per tensor. Each step's factors are logged as `rgn/<group name>`
    (`log=False`: not); `.factors` is the table. Under DDP the gradients are all-reduced before the hook, so
    every rank computes the same factors."""

    def __init__(self, per='group', log: bool = True):
        self.per, self.log, self.scaler, self._on = choice(Per, per, 'per'), log, None, False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not self._on or self.scaler.opt is not optimizer:  # a new fit or another optimizer: a new table
            self._off()
            self.scaler, self._on = RGNScaler(optimizer, self.per), True
        last = self.scaler()
        if self.log:
            logs = {f'rgn/{n}': f for n, f in zip(self.scaler.names, last) if not math.isnan(f)}
            pl_module.log_dict(logs, on_step=True, on_epoch=False)

    def on_fit_end(self, trainer, pl_module): self._off()
    def on_exception(self, trainer, pl_module, exception): self._off()

    def _off(self):
        "The optimizer's step hook off, the scheduled rates kept; the factors stay readable"
        if self._on: self.scaler.remove()
        self._on = False

    @property
    def factors(self):
        "The factors of every step: `step, group, name, tensor, rgn, factor, lr` (the scheduled rate)"
        return self.scaler.factors if self.scaler is not None else RGN(self.per).df

