"""Fit a training run into a wall-clock budget (``callbacks.time_budget.minutes``).

Lightning's ``max_time`` stops wherever the clock runs out: mid-schedule with the learning rate
still high, and, validating every n-th epoch, possibly after an epoch nobody scored. Under
``data.protocol=cv`` the final epoch is the result, so this callback plans instead. After every
epoch it times the recent ones (validation included), works out how many more whole validation
periods fit before the deadline, makes that the run's epoch count (``trainer.max_epochs`` stays
the cap) and re-plans the learning-rate schedule to end on the new last step. A slower hour of
the same machine then trains fewer epochs instead of running longer.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from esc50_lightning.errors import UserError
from esc50_lightning.training.schedules import steps_per_batch, try_schedule

log = logging.getLogger(__name__)


def epochs_that_fit(
    done: int, seconds_left: float, epoch_seconds: float, every: int, cap: int, planned: int | None = None
) -> int:
    """The run's epoch count: ``done`` plus as many epochs of ``epoch_seconds`` as fit in
    ``seconds_left``, rounded down to a validated epoch (a multiple of ``every``). Never below
    the end of the current validation period (its last epoch must be scored), never above ``cap``.

    Given the current plan (``planned``), a longer plan is taken only when it fits with an epoch
    to spare, and a shorter one only when the current plan overruns by more than an epoch: on a
    clock near a period's boundary the plan, and the schedule's length with it, would otherwise
    flip between two lengths from epoch to epoch, and a plan cut short at its last epoch leaves
    the learning-rate schedule unfinished (the run may overrun by up to an epoch instead).
    """

    period_end = math.ceil(done / every) * every

    def fit(seconds: float) -> int:
        more = math.floor(max(0.0, seconds) / epoch_seconds) if epoch_seconds > 0 else cap
        return min(cap, max(period_end, (done + more) // every * every))

    fits = fit(seconds_left)
    if planned is not None and fits > planned and fit(seconds_left - epoch_seconds) <= planned:
        return planned  # training goes on only while done < planned: it still covers this period
    if planned is not None and done <= planned and fits < planned <= fit(seconds_left + epoch_seconds):
        return planned  # over by less than an epoch: finish the schedule as planned
    return fits


class TimeBudget(Callback):
    """Ends training on a validated epoch before ``minutes`` of training have passed, with the
    learning-rate schedule complete. ``minutes=None`` turns it off (train ``max_epochs``).

    The clock starts when training starts (the decode cache is built before) and carries over a
    resume. ``window`` epochs, the latest, give the speed. Planning is in whole validation periods
    (a longer plan needs an epoch to spare; a shorter one is taken when the plan overruns by
    more than an epoch), so a run ends up to a period and an epoch early, or up to an epoch late;
    a machine that slows down after the last plan can still overrun by that period's slowdown.
    """

    def __init__(self, minutes: float | None = None, window: int = 10):
        if minutes is not None and not (isinstance(minutes, int | float) and minutes > 0):
            raise UserError(
                f"callbacks.time_budget.minutes={minutes} must be a number of minutes above 0, or null"
            )
        if window < 1:
            raise UserError(f"callbacks.time_budget.window={window} must be 1 or more")
        self.minutes = minutes
        self._recent: deque[float] = deque(maxlen=window)
        self._spent = 0.0  # seconds of training before this process (a resumed run)
        self._start = 0.0
        self._mark = 0.0
        self._cap: int | None = None
        self._planned: int | None = None

    @property
    def active(self) -> bool:
        return self.minutes is not None

    def seconds_spent(self) -> float:
        return self._spent + (time.monotonic() - self._start if self._start else 0.0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        self._start = self._mark = time.monotonic()
        self._cap = trainer.max_epochs  # check_time_budget made sure it is a number

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active or self._cap is None:
            return
        now = time.monotonic()
        self._recent.append(now - self._mark)
        self._mark = now
        done = trainer.current_epoch + 1
        every = trainer.check_val_every_n_epoch or 1
        epoch_seconds = sum(self._recent) / len(self._recent)
        left = self.minutes * 60.0 - self.seconds_spent()
        planned = epochs_that_fit(done, left, epoch_seconds, every, self._cap, self._planned)
        # Every DDP rank must stop on the same epoch: rank 0's clock decides.
        planned = int(trainer.strategy.broadcast(planned, src=0))
        trainer.fit_loop.max_epochs = planned
        steps_per_epoch = trainer.global_step / done
        for config in trainer.lr_scheduler_configs:
            if config.interval == "step" and hasattr(config.scheduler, "replan"):
                config.scheduler.replan(round(steps_per_epoch * planned))
        if planned != self._planned:
            log.info(
                "time budget: %d epochs in all (%.1f s an epoch, %.1f of %g min left)",
                planned,
                epoch_seconds,
                max(0.0, left) / 60.0,
                self.minutes,
            )
            self._planned = planned

    def state_dict(self) -> dict[str, Any]:
        return {"seconds_spent": self.seconds_spent(), "recent": list(self._recent)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._spent = float(state_dict.get("seconds_spent", 0.0))
        self._recent.extend(state_dict.get("recent", []))


def check_time_budget(
    callbacks: Iterable[Any], scheduler_factory: Callable[..., Any] | None, max_epochs: int | None
) -> None:
    """Refuse, before training, a time budget without an epoch cap, or with a per-step schedule it
    cannot re-plan (that schedule would be cut off with its learning rate still high)."""
    if not any(isinstance(c, TimeBudget) and c.active for c in callbacks):
        return
    if max_epochs is None or max_epochs < 0:
        raise UserError(
            f"callbacks.time_budget needs trainer.max_epochs (now {max_epochs}): the most epochs it may plan"
        )
    if scheduler_factory is None or not steps_per_batch(scheduler_factory):
        return  # constant or per-epoch rates: stopping early leaves them as they are
    if not hasattr(try_schedule(scheduler_factory), "replan"):
        name = getattr(scheduler_factory, "func", scheduler_factory)
        raise UserError(
            f"callbacks.time_budget cannot shorten {getattr(name, '__name__', name)}'s schedule to the "
            "epochs that fit: use optim=adamw_cosine, or callbacks.time_budget.minutes=null"
        )
