"""Training: build what the config names, fit, score (holdout), write results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from esc50_lightning.errors import UserError
from esc50_lightning.factory import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_logmel,
    build_module,
    build_trainer,
    describe_lr_scaling,
)
from esc50_lightning.tasks.checks import check_train_config, early_stopping_on
from esc50_lightning.tasks.results import write_results
from esc50_lightning.tasks.resume import resume_in_place
from esc50_lightning.training.display import quiet_lightning
from esc50_lightning.training.gpu_share import mps_daemon_status
from esc50_lightning.training.time_budget import check_time_budget

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    quiet_lightning()
    check_train_config(cfg)
    resume, run_dir = resume_in_place(cfg)  # a resumed run continues in its own folder
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    logmel = build_logmel(cfg)
    datamodule = build_datamodule(cfg, logmel)
    describe_run(cfg, datamodule, run_dir)
    module = build_module(cfg, datamodule.class_names, logmel, data=datamodule.describe())
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, with_loggers=bool(loggers), early_stopping=early_stopping_on(cfg))
    check_time_budget(callbacks, module.scheduler_factory, cfg.trainer.get("max_epochs"))
    log_config(loggers, cfg)
    trainer = build_trainer(cfg, callbacks, loggers)
    if trainer.local_rank == 0:
        # Check every audio file and build the caches before Lightning launches other processes
        # (DDP): a data problem is then reported once, not also as a broken link on every rank.
        datamodule.prepare_data()

    # weights_only: Lightning re-reads the file resume_in_place verified; never unpickle objects
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    if trainer.interrupted:
        raise UserError("training interrupted; resume with ckpt_path=latest")
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    if datamodule.protocol == "holdout" and cfg.trainer.get("max_epochs", 1) != 0:
        history = list(module.history)  # loading the best checkpoint would rewind it
        trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
        module.history = history
    return write_results(trainer, module, datamodule, run_dir, best)


def describe_run(cfg: DictConfig, datamodule: Any, run_dir: Path) -> None:
    """Log what is trained on which folds, where, and any scaled learning rate or GPU sharing."""
    classes = len(datamodule.class_names)  # reads and checks the CSV, which sets the splits
    log.info(
        "%s on %s: train folds %s, validation %s, test %s (protocol %s), %d classes; run dir %s",
        cfg.model.name,
        datamodule.spec.name,
        datamodule.splits["train"],
        datamodule.splits["val"],
        datamodule.splits["test"],
        datamodule.protocol,
        classes,
        run_dir,
    )
    if scaling := describe_lr_scaling(cfg):
        log.info(scaling)
    log_gpu_sharing(cfg)


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


def log_config(loggers: list[Any], cfg: DictConfig) -> None:
    """Log the composed config, flattened, as every logger's hyperparameters (rank zero only:
    Lightning's loggers ignore the call elsewhere)."""
    from omegaconf import OmegaConf

    if loggers:
        params = flat_config(OmegaConf.to_container(cfg, resolve=True))
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
