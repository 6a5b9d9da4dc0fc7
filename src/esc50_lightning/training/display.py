"""What users read of a Lightning run: epochs counted from 1 in the progress bar and the checkpoint
file names (Lightning counts from 0), a model summary without the FLOPs column Lightning cannot
fill, and Lightning's lines of noise dropped."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from rich import get_console
from rich.table import Table
from torch import Tensor

_log = logging.getLogger(__name__)


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with ``{epoch}`` in file names counted from 1, as the logs
    and metrics.json count: the first epoch's checkpoint is ``epoch001-...``, not ``epoch000-...``.

    Same class name as Lightning's, so the callback state of runs saved before (keyed by class
    name) still restores on resume.
    """

    def _monitor_candidates(self, trainer: L.Trainer) -> dict[str, Tensor]:
        # Lightning takes ``{epoch}`` from a logged "epoch" (the classifier logs it from 1) or
        # else its own count from 0: set it here from the trainer, whatever was logged.
        candidates = super()._monitor_candidates(trainer)
        candidates["epoch"] = torch.tensor(trainer.current_epoch + 1)
        return candidates

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the scores, never the paths: a checkpoint's stored paths are data from a file,
        and Lightning would later delete what they name. Each becomes the file of the same name
        in this run's own checkpoint folder, or is dropped where the folder has no such file."""
        own = {}
        if self.dirpath and Path(self.dirpath).is_dir():
            own = {p.name: p for p in Path(self.dirpath).iterdir() if p.is_file() and not p.is_symlink()}

        def here(stored: Any) -> str:
            found = own.get(PurePath(stored).name) if isinstance(stored, str) and stored else None
            return str(found) if found is not None else ""

        state = dict(state_dict)
        state["dirpath"] = self.dirpath
        kept = {here(path): score for path, score in (state.get("best_k_models") or {}).items()}
        state["best_k_models"] = {path: score for path, score in kept.items() if path}
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = here(state.get(key))
        if not state["best_model_path"]:
            state["best_model_score"] = None
        super().load_state_dict(state)


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` with wandb's console lines replaced by one line of the run's log.

    - wandb is made silent: its banner, run tables and closing hints are written outside the log
      format, with colour codes even into a redirected log. What the user needs of them, where
      the run is and how to upload it, is logged once at the end (:meth:`finalize`).
    - Lightning always hands ``wandb.init`` an ``anonymous`` argument (``None`` when not asked
      for), which wandb 0.19+ answers with a warning the user cannot act on: it is left out.

    A ``settings`` given in the config (a mapping of ``wandb.Settings`` fields) is kept; its
    ``silent: false`` brings wandb's own lines back.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        settings = self._wandb_init.get("settings") or {}
        if isinstance(settings, Mapping):
            self._wandb_init["settings"] = {"silent": True, **settings}
        self._announced = False

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is None or self._announced:
            return
        self._announced = True  # Lightning finalizes after fit and again after test
        settings = self._experiment.settings
        if settings._offline:
            _log.info("W&B run written offline; upload it with: wandb sync %s", settings.sync_dir)
        elif self._experiment.url:
            _log.info("W&B run: %s", self._experiment.url)


class ProgressBar(RichProgressBar):
    """Rich's progress bar showing ``Epoch 1/2`` and ``Epoch 2/2`` for two epochs (Lightning's
    shows ``Epoch 0/1`` and ``Epoch 1/1``); off when the output is not a terminal or notebook,
    where it would leave only its last frame in the log (train.log has a line per epoch)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        console = get_console()
        if not (console.is_terminal or console.is_jupyter):
            self.disable()

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            description += f"/{self.trainer.max_epochs}"
        # as Lightning's: padded to the validation bar's label, so the bars do not jump
        return f"{description:{len(self.validation_description)}}"


class ModelSummary(RichModelSummary):
    """Rich's model summary less the FLOPs (Lightning counts them only for a module with an
    ``example_input_array``, which the classifier has not: always 0) and the per-module mode."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        console = get_console()
        columns = [(name, values) for name, values in summary_data if name not in ("FLOPs", "Mode")]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(name or " ", justify="right" if name.startswith("Params") else "left")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console.print(table)
        frozen = total_parameters - trainable_parameters
        console.print(
            f"Parameters: {get_human_readable_count(trainable_parameters).strip()} trainable, "
            f"{get_human_readable_count(frozen).strip()} frozen ({model_size:.1f} MB)"
        )


# Trackers' own lines: MLflow creates the experiment of a first run (Lightning says so twice).
_TRACKER_NOISE = r"|Experiment with name .* not found\. Creating it\.|Creating initial MLflow database tables"
_TRACKER_LOGGERS = ("lightning.pytorch.loggers.mlflow", "mlflow.store.db.utils", "mlflow.tracking")
# Lines Lightning logs that tell the user nothing: advertisements for its cloud services,
# accelerators the machine does not have, a stop reason the last epoch's line gives, and the
# announcement of a checkpoint load that the next line ("Loaded ...", "Restored ...") confirms.
_NOISE = re.compile(
    r"(💡 )?Tip: .*\[lit(logger|models)\]"
    r"|(TPU|HPU) available: False"
    r"|`Trainer\.fit` stopped: `max_epochs=\d+` reached"
    r"|Restoring states from the checkpoint path at " + _TRACKER_NOISE
)
# Lightning logs through whichever of these its modules were imported under.
_LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _NOISE.match(record.getMessage()) is None


def quiet_lightning() -> None:
    """Drop Lightning's and the trackers' lines of noise from this process's output, and print
    each of Lightning's lines once, in the run's log format (safe to call again)."""
    if logging.getLogger().hasHandlers():  # Hydra's handlers (console and the run's log file)
        # Lightning gives its loggers console handlers of their own on import: each line would
        # print twice, once plain ("INFO: GPU available: ...") and once through the root's.
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
            logger.propagate = True
    for name in (*_LIGHTNING_LOGGERS, *_TRACKER_LOGGERS):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    # MLflow's database set-up, step by step (alembic's migrations): nothing to act on.
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Metrics are logged once per epoch, never per step: the step-logging interval is irrelevant.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than")
    # The CSV logger writes into the run folder, which Hydra has already started (.hydra/, the log).
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
