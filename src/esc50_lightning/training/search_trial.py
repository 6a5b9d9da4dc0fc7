"""A search trial's training run, talking to its search (``tasks/search.py``) over two pipes.

After each validation the run writes one JSON line (epoch, ``max_epochs``, the metric) to its
search and waits for one word back: ``go`` or ``prune``. On ``prune`` it ends after this epoch,
as early stopping would. The search owns the study: only it reports to Optuna and asks the
pruner, so the child needs neither the storage nor the pruner, and SQLite has one writer.

A search the run cannot reach (its end of a pipe closed: the search was killed) leaves the run
training to its end.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from esc50_lightning.errors import UserError

log = logging.getLogger(__name__)

PRUNE, GO = "prune", "go"


class ReportToSearch(Callback):
    """Report ``metric`` (a validation metric, ``val/loss``) after each validation; stop when
    the search prunes the trial. ``to_search`` and ``from_search`` are the pipes' file
    descriptors, inherited from the search process (rank zero only holds them)."""

    def __init__(self, metric: str, to_search: int, from_search: int):
        self.metric = metric
        self.to_search, self.from_search = to_search, from_search
        self.connected = True

    def _ask(self, line: dict[str, Any]) -> str:
        """Send one report, read the verdict; ``go`` if the search has gone away."""
        try:
            os.write(self.to_search, (json.dumps(line) + "\n").encode())
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = os.read(self.from_search, 64)
                if not chunk:
                    raise BrokenPipeError
                answer += chunk
        except OSError:  # the search is gone (killed): finish the run as a plain training run
            log.warning("the search this run reports to is gone: training on to the last epoch")
            self.connected = False
            return GO
        return answer.decode().strip()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero and self.connected:
            value = trainer.callback_metrics.get(self.metric)
            if value is None:
                names = ", ".join(sorted(k for k in trainer.callback_metrics if k.startswith("val/")))
                raise UserError(f"hparams_search.metric: the run logs no {self.metric} (it logs {names})")
            epoch = trainer.current_epoch + 1
            verdict = self._ask({"epoch": epoch, "max_epochs": trainer.max_epochs, "value": float(value)})
            prune = verdict == PRUNE
            if prune:
                log.info("epoch %d: the search prunes this trial (%s %.4f)", epoch, self.metric, value)
        # every rank stops together (under DDP only rank zero asked)
        if trainer.strategy.broadcast(prune, src=0):
            trainer.should_stop = True
