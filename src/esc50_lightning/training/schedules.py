"""Schedules: learning rates that need the run's total number of optimiser steps, and the
weighting of the moving average of the weights (EMA)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from esc50_lightning.errors import UserError


def steps_per_batch(factory: Callable[..., Any]) -> bool:
    """Whether a scheduler factory takes the run's ``total_steps`` (warmup_cosine, OneCycleLR):
    such schedules are built with it and stepped every batch, the others every epoch."""
    return "total_steps" in inspect.signature(factory).parameters


def try_schedule(factory: Callable[..., Any]) -> Any:
    """The schedule ``factory`` builds on a throwaway one-parameter optimiser (100 steps long
    where it counts steps): to check a config's settings, or what kind of schedule it makes,
    before a run starts."""
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return factory(probe, **({"total_steps": 100} if steps_per_batch(factory) else {}))


class WarmupCosine(LambdaLR):
    """Linear warm-up over ``warmup_fraction`` of training, then cosine decay to
    ``final_lr_fraction`` of the peak rate (zero by default). A floor above zero keeps the weights
    moving at the end, so a moving average of them (the EMA callback) averages distinct models,
    as in stochastic weight averaging, instead of copies of the last one.

    ``replan`` changes the run's length while it trains: a time budget
    (``esc50_lightning.training.time_budget``) learns the machine's speed as it goes, and the schedule
    then ends its decay on the new last step instead of being cut off.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_fraction: float = 0.05,
        final_lr_fraction: float = 0.0,
    ):
        if not 0.0 <= warmup_fraction < 1.0:
            raise UserError(f"optim.scheduler.warmup_fraction={warmup_fraction} must be in [0, 1)")
        if not 0.0 <= final_lr_fraction <= 1.0:
            raise UserError(f"optim.scheduler.final_lr_fraction={final_lr_fraction} must be in [0, 1]")
        # Plain attributes: LambdaLR's state_dict saves them, so a resumed run keeps its plan.
        self.total_steps = total_steps
        self.warmup_fraction = warmup_fraction
        self.final_lr_fraction = final_lr_fraction
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        """The learning rate at optimiser step ``step``, as a share of the peak rate."""
        warmup = max(1, int(self.total_steps * self.warmup_fraction))
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_lr_fraction + (1.0 - self.final_lr_fraction) * cosine

    def replan(self, total_steps: int) -> None:
        """Make the run ``total_steps`` optimiser steps long, from the next step on."""
        self.total_steps = total_steps
        share = self.factor(self.last_epoch)  # LambdaLR counts steps in last_epoch
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * share
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, final_lr_fraction: float = 0.0
) -> WarmupCosine:
    """``WarmupCosine``, under the name configs and saved checkpoints name (optim=adamw_cosine)."""
    return WarmupCosine(optimizer, total_steps, warmup_fraction, final_lr_fraction)


def ema_multi_avg_fn(decay: float = 0.998) -> Callable[[list[Tensor], list[Tensor], Tensor | int], None]:
    """Exponential moving average of the weights, bias-corrected, for ``AveragedModel``
    (Lightning's ``WeightAveraging`` callback builds one from ``multi_avg_fn``).

    torch's ``get_ema_multi_avg_fn`` starts the average at the random initial weights and keeps
    a share ``decay**n`` of them after ``n`` updates: 22 % after 750 steps at 0.998, enough to
    keep a validated average (BatchNorm statistics included) at chance for the first 15 epochs
    of a 50-step epoch. Here the update ``n`` moves the average towards the weights by
    ``(1 - decay) / (1 - decay**(n + 1))`` (Adam's bias correction), so the average is always
    the exponentially weighted mean of the weights seen so far, the initial ones weighing no
    more than their turn. After ``n`` updates the two averages differ by a share of about
    ``decay**n`` (2e-6 after 6500 steps at 0.998): the end of a long run is the same.
    """
    if not 0.0 <= decay < 1.0:
        raise UserError(f"callbacks.ema.multi_avg_fn.decay={decay}: EMA decay must be in [0, 1)")

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor | int) -> None:
        # AveragedModel copies the first weights itself and calls this from then on, with the
        # tensors grouped by device and dtype; num_averaged counts the updates before this one.
        # The step's weight is computed where the count is, never read on the host: a read
        # would make the CPU wait for the GPU at every step.
        if averaged[0].is_floating_point() or averaged[0].is_complex():
            if isinstance(num_averaged, int):  # HostCountAveragedModel (training.ema): a scalar
                weight: Tensor | float = (1.0 - decay) / (1.0 - decay ** (num_averaged + 1))
            else:
                dtype = torch.float32 if num_averaged.device.type == "mps" else torch.float64
                count = num_averaged.to(dtype)
                weight = ((1.0 - decay) / (1.0 - torch.pow(decay, count + 1))).to(averaged[0].dtype)
            step = torch._foreach_sub(current, averaged)
            torch._foreach_mul_(step, weight)
            torch._foreach_add_(averaged, step)
        else:  # integer buffers (BatchNorm's num_batches_tracked): a count, not a weight
            torch._foreach_copy_(averaged, current)

    return update
