"""One LightningModule for every architecture: features on the device, logits, loss and metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from esc50_lightning.errors import UserError
from esc50_lightning.features import Batch, FeatureExtractor
from esc50_lightning.features.chain import Weight, dominant_labels
from esc50_lightning.training.metrics import classification_metrics, confusion_figure
from esc50_lightning.training.schedules import steps_per_batch

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]

log = logging.getLogger(__name__)


class AudioClassifier(L.LightningModule):
    """Wraps any ``nn.Module`` over log-mels.

    ``on_after_batch_transfer`` turns batches (waveforms or cached log-mels) into model inputs on
    the training device; the random crop and the augmentation chain apply only in training mode,
    where the labels come out of the chain as weighted terms (mixing clips mixes their labels).
    Metrics are accumulated over the whole epoch, never averaged over batches.
    """

    def __init__(
        self,
        net: nn.Module,
        features: FeatureExtractor,
        optimizer: OptimizerFactory | None,
        class_names: Sequence[str],
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
        backbone_lr_scale: float | None = None,
    ):
        super().__init__()
        self.net = net
        self.features = features
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.class_names = list(class_names)
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last
        self.compile = compile
        if backbone_lr_scale is not None and not 0 < backbone_lr_scale <= 1:
            raise UserError(f"optim.backbone_lr_scale={backbone_lr_scale} must be in (0, 1] (null: one rate)")
        # The pretrained backbone's learning rate as a share of the head's (null: one rate for all).
        self.backbone_lr_scale = backbone_lr_scale
        n = len(self.class_names)
        # ModuleDict keys cannot be "train" (an nn.Module method): key by "<stage>_".
        self.metrics = nn.ModuleDict({f"{s}_": classification_metrics(n) for s in ("train", "val", "test")})
        self.losses = nn.ModuleDict({f"{s}_": MeanMetric() for s in ("train", "val", "test")})
        self.confusion = MulticlassConfusionMatrix(n, validate_args=False)
        # The epoch's training losses, batch sizes, predictions and labels, kept on the device and
        # counted into the metrics at its end, once: each update reads something back on the
        # host (the loss's NaN check, bincount's size), which on a GPU is a sync per step.
        self._train_steps: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []
        self.history: list[dict[str, float]] = []  # one entry per validation epoch
        self.test_results: dict[str, float] = {}
        self.run_info: dict[str, Any] = {}  # the run record (factory.run_record), saved in checkpoints
        self._eval_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.last_val_outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_test_outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._best_val_loss = float("inf")
        self._epoch_start = time.perf_counter()
        self._best_confusion: tuple[Any, dict[str, float], int] | None = None
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def configure_model(self) -> None:
        if self.compile and not isinstance(self.net, torch._dynamo.eval_frame.OptimizedModule):
            self.net = torch.compile(self.net)

    # ---- forward ---------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, Any]:
        if self.training:  # the augmentation chain may mix clips, and their labels with them
            out = self.features.augment(Batch.of(batch["x"], batch["y"]))
            x, batch = out.x, {**batch, "targets": out.targets}
        else:
            x = self.features(batch["x"])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return {**batch, "x": x}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``self.features``' output: one row per clip (several evaluation cuts of a
        clip, ``features.eval_crops``, are averaged)."""
        return self.features.pool(self.net(x))

    # ---- steps -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """``batch["targets"]``: the labels as ``(weight, labels)`` terms (``features.Batch``)."""
        targets = batch.get("targets") or ((1.0, batch["y"]),)
        logits = self(batch["x"])
        loss = self._loss(logits, targets)
        y = dominant_labels(targets)  # metrics follow the dominant clip of a mix
        self._train_steps.append((loss.detach(), batch["x"].shape[0], logits.detach().argmax(dim=1), y))
        return loss

    def _loss(self, logits: torch.Tensor, targets: tuple[tuple[Weight, torch.Tensor], ...]) -> torch.Tensor:
        """``Σ weight · cross-entropy`` over the label terms; a per-clip weight weighs each clip."""
        logits, loss = logits.float(), None
        for weight, labels in targets:
            if isinstance(weight, torch.Tensor):
                each = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction="none")
                term = (weight * each).mean()
            else:
                term = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
                term = term if weight == 1.0 else weight * term
            loss = term if loss is None else loss + term
        return loss

    def _eval_step(self, stage: str, batch: dict[str, torch.Tensor]) -> None:
        logits = self(batch["x"]).float()
        loss = F.cross_entropy(logits, batch["y"])
        self.losses[stage + "_"].update(loss, weight=batch["y"].shape[0])
        self.metrics[stage + "_"].update(logits, batch["y"])
        if stage == "val":
            self.confusion.update(logits, batch["y"])
        self._eval_outputs.append((batch["row"].detach().cpu(), logits.detach().cpu()))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    # ---- epoch ends ------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch under way counted from 1, as users read it everywhere (logs, history,
        metrics.json, file names); Lightning's ``current_epoch`` counts from 0."""
        return self.current_epoch + 1

    def _epoch_values(self, stage: str) -> dict[str, float]:
        values = {f"{stage}/loss": self.losses[stage + "_"].compute()}
        values.update({f"{stage}/{k}": v for k, v in self.metrics[stage + "_"].compute().items()})
        self.losses[stage + "_"].reset()
        self.metrics[stage + "_"].reset()
        # Trackers (TensorBoard, CSV, MLflow, W&B) get the epoch counted from 1, as users read it
        # everywhere; without it Lightning adds its own, from 0. Test rows keep Lightning's (the
        # number of epochs trained).
        logged = values if stage == "test" else {**values, "epoch": float(self.epoch)}
        self.log_dict(logged, sync_dist=False)  # torchmetrics already synced across ranks
        return {k: float(v) for k, v in values.items()}

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self._train_steps = []

    def count_train_steps(self) -> None:
        """Count the epoch's training steps into its loss and metrics, all at once."""
        if self._train_steps:
            losses, sizes, predictions, labels = zip(*self._train_steps, strict=True)
            values = torch.stack(losses).float()
            weights = torch.tensor(sizes, dtype=torch.float32, device=values.device)
            # torchmetrics leaves non-finite losses out of the mean with a generic warning: say
            # here how many steps diverged, or a NaN run reads like a training one
            bad = int((~torch.isfinite(values)).sum())
            if bad:
                log.warning(
                    "epoch %d: %d of %d training steps had a non-finite loss (left out of train/loss)",
                    self.epoch,
                    bad,
                    len(values),
                )
            self.losses["train_"].update(values, weight=weights)
            self.metrics["train_"].update(torch.cat(predictions), torch.cat(labels))
            self._train_steps = []

    def on_train_epoch_end(self) -> None:
        self.count_train_steps()
        # Validation has run by now (Lightning 2.x): one line per epoch in train.log for `tail -f`.
        parts = [f"epoch {self.epoch}/{self.trainer.max_epochs}"]
        train = self._epoch_values("train")
        parts.append(f"train loss {train['train/loss']:.4f} acc {train['train/acc']:.4f}")
        if self.history and self.history[-1]["epoch"] == self.epoch:
            val = self.history[-1]
            parts.append(f"val loss {val['val/loss']:.4f} acc {val['val/acc']:.4f}")
        parts.append(f"{time.perf_counter() - self._epoch_start:.1f} s")
        if self.global_rank == 0:
            log.info(" | ".join(parts))

    def on_validation_epoch_start(self) -> None:
        self._eval_outputs = []

    def on_validation_epoch_end(self) -> None:
        values = self._epoch_values("val")
        matrix = self.confusion.compute().cpu().numpy()
        self.confusion.reset()
        self.last_val_outputs = self._gather_outputs()
        if self.trainer.sanity_checking:
            return
        self.history.append({"epoch": self.epoch, **values})
        if values["val/loss"] < self._best_val_loss:
            self._best_val_loss = values["val/loss"]
            # Drawn once when training ends: a figure costs ~0.5 s, every improving epoch.
            self._best_confusion = (matrix, values, self.epoch)

    def on_train_end(self) -> None:
        if self._best_confusion is not None:
            self._log_confusion(*self._best_confusion)
            self._best_confusion = None

    def on_test_epoch_start(self) -> None:
        self._eval_outputs = []

    def on_test_epoch_end(self) -> None:
        self.test_results = self._epoch_values("test")
        self.last_test_outputs = self._gather_outputs()

    def _gather_outputs(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        outputs = self._eval_outputs
        self._eval_outputs = []
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, outputs)
            outputs = [item for part in gathered for item in part]
        if not outputs:
            return None
        rows = torch.cat([r for r, _ in outputs])
        logits = torch.cat([lg for _, lg in outputs])
        order = torch.argsort(rows)
        return rows[order], logits[order]

    def _log_confusion(self, matrix: Any, values: dict[str, float], epoch: int) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if self.global_rank != 0 or not hasattr(experiment, "add_figure"):
            return
        title = f"epoch {epoch}: val acc {values['val/acc']:.3f} (lowest val loss)"
        fig = confusion_figure(matrix, self.class_names, title)
        experiment.add_figure("val/confusion_matrix_best", fig, global_step=epoch)
        plt.close(fig)

    # ---- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:  # rebuilt from a checkpoint: for evaluation only
            raise UserError("this model was rebuilt for evaluation and has no optimiser to train with")
        optimizer = self.optimizer_factory(params=self._param_groups())
        if self.backbone_lr_scale is not None:  # before the schedule reads the base rates
            optimizer.param_groups[1]["lr"] *= self.backbone_lr_scale
        if self.scheduler_factory is None:
            return optimizer
        per_batch = steps_per_batch(self.scheduler_factory)
        kwargs = {"total_steps": int(self.trainer.estimated_stepping_batches)} if per_batch else {}
        scheduler = self.scheduler_factory(optimizer, **kwargs)
        interval = "step" if per_batch else self.scheduler_interval
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def _param_groups(self) -> Any:
        """All parameters, or (``backbone_lr_scale``) the head's and the backbone's groups."""
        if self.backbone_lr_scale is None:
            return self.parameters()
        from esc50_lightning.training.finetune import backbone_of

        backbone = backbone_of(self.net)
        ids = {id(p) for p in backbone}
        return [{"params": [p for p in self.parameters() if id(p) not in ids]}, {"params": backbone}]

    # ---- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["esc50"] = {**self.run_info, "history": self.history}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint["esc50"].get("history", []))
        if self.history:
            self._best_val_loss = min(h["val/loss"] for h in self.history)
