"""Training entry point: build what the config names, fit, test (holdout), write results."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary
from lightning.pytorch.callbacks.progress import ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from esc50_lightning.checkpoints.io import AtomicCheckpointIO
from esc50_lightning.errors import UserError
from esc50_lightning.factory import build_logmel, build_module, describe_lr_scaling, instantiate_setting
from esc50_lightning.tasks.checks import check_train_config, early_stopping_on
from esc50_lightning.tasks.results import print_summary, run_metrics, save_metrics, write_predictions
from esc50_lightning.tasks.resume import continue_log_in, record_resume, resolve_resume
from esc50_lightning.training.display import quiet_lightning
from esc50_lightning.training.gpu_share import mps_daemon_status
from esc50_lightning.training.time_budget import check_time_budget

log = logging.getLogger(__name__)


def _local_rank() -> int:
    """This process's rank on its node: set by Lightning's launcher, torchrun or SLURM; else 0."""
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def display_callbacks(callbacks: list[Any], trainer_cfg: DictConfig) -> tuple[list[Any], dict[str, bool]]:
    """The callbacks and the Trainer flags that make the callbacks group alone decide on the
    progress bar, the model summary and checkpoints.

    Lightning otherwise adds its own where the group has none (with epochs counted from 0, and a
    note that it skips its summary where the group has one). ``trainer.enable_progress_bar``,
    ``enable_model_summary`` or ``enable_checkpointing`` set to false still turn the group's off.
    """
    for flag, kind in (
        ("enable_progress_bar", ProgressBar),
        ("enable_model_summary", ModelSummary),
        ("enable_checkpointing", ModelCheckpoint),
    ):
        if trainer_cfg.get(flag) is False:
            callbacks = [c for c in callbacks if not isinstance(c, kind)]
    flags = {
        "enable_progress_bar": any(isinstance(c, ProgressBar) for c in callbacks),
        "enable_model_summary": False,  # the flag adds Lightning's summary; the group's runs anyway
        "enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks),
    }
    return callbacks, flags


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The composed config as one level of dotted keys (``trainer.max_epochs``), as trackers
    show hyperparameters; lists and None become strings."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def log_config(loggers: list[Any], config: dict[str, Any]) -> None:
    """Log the composed config, flattened, as every logger's hyperparameters (rank zero only:
    Lightning's loggers ignore the call elsewhere)."""
    if loggers:
        params = flat_config(config)
        for logger in loggers:
            logger.log_hyperparams(params)


def log_gpu_sharing(cfg: DictConfig) -> None:
    """In a sweep on a GPU (hydra/launcher=shared_gpu), say whether an MPS daemon shares it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    accelerator = cfg.trainer.get("accelerator")
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_cuda and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        log.info(mps_daemon_status())


def train(cfg: DictConfig) -> dict[str, Any]:
    quiet_lightning()
    check_train_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    resume = resolve_resume(cfg.get("ckpt_path"), Path(cfg.paths.log_dir), cfg)
    original = resume.parent.parent if resume is not None else None
    if original is not None and resume.parent.name == "checkpoints" and (original / ".hydra").is_dir():
        # Continue in the original run directory so checkpoints and TensorBoard curves carry on.
        with open_dict(cfg):
            cfg.paths.output_dir = str(original)
        if run_dir != original:
            continue_log_in(run_dir, original)
            if _local_rank() == 0:
                record_resume(run_dir, original)
            if run_dir.is_dir() and not any(run_dir.glob("checkpoints/*")):
                shutil.rmtree(run_dir, ignore_errors=True)
        run_dir = original
    if resume is not None:
        log.info("Resuming from %s in %s", resume, run_dir)

    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in the run's config
    logmel = build_logmel(cfg)
    datamodule = instantiate_setting(cfg.data, "data", frontend=logmel)
    class_names = datamodule.class_names  # reads and checks the CSV
    log.info(
        "%s on %s: train folds %s, validation %s, test %s (protocol %s), %d classes; run dir %s",
        cfg.model.name,
        datamodule.spec.name,
        datamodule.splits["train"],
        datamodule.splits["val"],
        datamodule.splits["test"],
        datamodule.protocol,
        len(class_names),
        run_dir,
    )
    module = build_module(cfg, class_names, logmel)
    scaling = describe_lr_scaling(cfg)
    if scaling:
        log.info(scaling)
    log_gpu_sharing(cfg)
    module.run_info = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "data": datamodule.describe(),
        "model_name": cfg.model.name,
    }
    callbacks = [
        instantiate_setting(c, f"callbacks.{key}")
        for key, c in (cfg.get("callbacks") or {}).items()
        if c and not (key == "early_stopping" and not early_stopping_on(cfg))  # off: patience null
    ]
    loggers = [instantiate_setting(c, f"logger.{key}") for key, c in (cfg.get("logger") or {}).items() if c]
    log_config(loggers, module.run_info["config"])
    if not loggers and any(isinstance(c, LearningRateMonitor) for c in callbacks):
        # Lightning refuses a learning-rate monitor without a logger; logger=none means "log nothing".
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    check_time_budget(callbacks, module.scheduler_factory, cfg.trainer.get("max_epochs"))
    callbacks, flags = display_callbacks(callbacks, cfg.trainer)
    if _local_rank() == 0:
        # Check every audio file and build the caches before Lightning launches other processes
        # (DDP): a data problem is then reported once, not also as a broken link on every rank.
        datamodule.prepare_data()
    plugins = [instantiate(p) if isinstance(p, DictConfig) else p for p in cfg.trainer.get("plugins") or []]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())  # never a half-written last.ckpt after kill -9
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins, **flags
    )

    # weights_only: Lightning re-reads the file resolve_resume checked; never let it unpickle objects
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True)
    if trainer.interrupted:
        raise UserError("training interrupted; resume with ckpt_path=latest")

    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") or None
    if datamodule.protocol == "holdout" and cfg.trainer.get("max_epochs", 1) != 0:
        history = list(module.history)  # loading the best checkpoint would rewind it
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        module.history = history

    metrics = run_metrics(module.history, module.test_results, module.run_info, epochs=trainer.current_epoch)
    metrics["best_checkpoint"] = best
    metrics["class_names"] = list(class_names)  # the report names classes no clip of a fold has
    if trainer.is_global_zero:
        table = datamodule.table
        save_metrics(run_dir / "metrics.json", metrics)
        head = metrics["headline"]
        if "acc" in head:
            log.info("Headline, %s: acc %.4f, macro F1 %.4f", head["source"], head["acc"], head["f1"])
        for name, outputs in (("val", module.last_val_outputs), ("test", module.last_test_outputs)):
            if outputs is not None and not (name == "test" and datamodule.protocol == "cv"):
                write_predictions(
                    run_dir / f"predictions_{name}.csv", outputs, table.files, table.labels, class_names
                )
        print_summary(metrics, run_dir)
    return metrics
