"""What users read of a Lightning run: epochs counted from 1 in the progress bar and the checkpoint
file names (Lightning counts from 0), a model summary without the FLOPs column Lightning cannot
fill, and Lightning's lines of noise dropped."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path, PurePath
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from rich import get_console
from rich.table import Table
from torch import Tensor


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with ``{epoch}`` in file names counted from 1, as the logs
    and metrics.json count: the first epoch's checkpoint is ``epoch001-...``, not ``epoch000-...``.

    Same class name as Lightning's, so the callback state of runs saved before (keyed by class
    name) still restores on resume.
    """

    def format_checkpoint_name(
        self,
        metrics: dict[str, Tensor],
        filename: str | None = None,
        ver: int | None = None,
        prefix: str | None = None,
    ) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename=filename, ver=ver, prefix=prefix)

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


# Lines Lightning logs that tell the user nothing: advertisements for its cloud services,
# accelerators the machine does not have, a stop reason the last epoch's line gives, and the
# announcement of a checkpoint load that the next line ("Loaded ...", "Restored ...") confirms.
_NOISE = re.compile(
    r"(💡 )?Tip: .*\[lit(logger|models)\]"
    r"|(TPU|HPU) available: False"
    r"|`Trainer\.fit` stopped: `max_epochs=\d+` reached"
    r"|Restoring states from the checkpoint path at "
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
    """Drop Lightning's lines of noise from this process's output (safe to call again)."""
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    # Metrics are logged once per epoch, never per step: the step-logging interval is irrelevant.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than")
