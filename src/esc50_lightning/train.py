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
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict

from esc50_lightning.build import build_logmel, build_module, read_checkpoint
from esc50_lightning.checkpoint_io import AtomicCheckpointIO
from esc50_lightning.errors import UserError
from esc50_lightning.hardware import cpu_has_native_bf16, cpu_model
from esc50_lightning.results import print_summary, run_metrics, save_metrics, write_predictions
from esc50_lightning.time_budget import check_time_budget

log = logging.getLogger(__name__)


def _check_config(cfg: DictConfig) -> None:
    dataset = cfg.data.get("dataset") or {}
    unset = [f"data.dataset.{k}" for k in ("root", "csv") if k in dataset and dataset[k] in (None, "")]
    if unset:  # data=folded_csv leaves them to the user
        raise UserError(
            f"{' and '.join(unset)} must be set, e.g. data.dataset.root=/path/to/dataset "
            "data.dataset.csv=meta.csv (relative to root); see docs/datasets.md"
        )

    epochs = cfg.trainer.get("max_epochs")
    if epochs is not None and epochs < 0:
        raise UserError(f"trainer.max_epochs={epochs} must be 0 or more")
    every = cfg.trainer.get("check_val_every_n_epoch") or 1
    if cfg.data.get("protocol") == "cv" and epochs and epochs % every:
        raise UserError(
            f"trainer.max_epochs={epochs} is not a multiple of trainer.check_val_every_n_epoch={every}: "
            "under data.protocol=cv the final epoch is the result, and it would not be validated"
        )
    accelerator = cfg.trainer.get("accelerator")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if cfg.trainer.get("sync_batchnorm") and on_cpu:
        # torch's SyncBatchNorm is GPU-only; trainer=ddp on CPU (gloo) runs with per-process BatchNorm.
        log.info("trainer.sync_batchnorm needs GPUs; turned off for this CPU run")
        with open_dict(cfg):
            cfg.trainer.sync_batchnorm = False
    use_native_precision(cfg, on_cpu)


def use_native_precision(cfg: DictConfig, on_cpu: bool) -> None:
    """Switch a CPU run's bf16 request to ``32-true`` where the CPU has no bf16 instructions."""
    precision = str(cfg.trainer.get("precision", ""))
    if on_cpu and precision.startswith("bf16") and cpu_has_native_bf16() is False:
        # bf16 only buys speed here, and without bf16 instructions oneDNN emulates it: the step is
        # several times slower than float32 (python -m esc50_lightning.bench shows the figures).
        log.warning(
            "trainer.precision=%s: this CPU (%s) has no bf16 instructions (avx512_bf16/amx_bf16), "
            "where bf16 runs several times slower than float32; training with 32-true instead",
            precision,
            cpu_model(),
        )
        with open_dict(cfg):
            cfg.trainer.precision = "32-true"


# What must match between a checkpoint's run and the command resuming it.
_RUN_IDENTITY = ("model.name", "data.dataset.name", "data.fold", "data.protocol")


def _identity(cfg: DictConfig) -> dict[str, Any]:
    return {key: OmegaConf.select(cfg, key, default=None) for key in _RUN_IDENTITY}


def _run_config(run_dir: Path) -> DictConfig | None:
    try:
        loaded = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    except Exception:
        return None
    return loaded if isinstance(loaded, DictConfig) else None


def resolve_resume(ckpt_path: str | None, log_dir: Path, cfg: DictConfig | None = None) -> Path | None:
    """The checkpoint to resume from: a path, or ``latest``.

    ``latest`` picks the newest ``last.ckpt`` under the outputs folder whose run was started with
    the same model, dataset, fold and protocol as this command, so re-running each command of a
    preempted sweep with ``ckpt_path=latest`` resumes that command's own run.
    """
    if not ckpt_path:
        return None
    if ckpt_path == "latest":
        candidates = sorted(log_dir.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if cfg is not None:
            want = _identity(cfg)
            candidates = [
                c for c in candidates if (rc := _run_config(c.parent.parent)) is None or _identity(rc) == want
            ]
        if not candidates:
            what = "" if cfg is None else " for " + " ".join(f"{k}={v}" for k, v in _identity(cfg).items())
            raise UserError(f"ckpt_path=latest: no checkpoints/last.ckpt under {log_dir}{what}")
        return candidates[-1]
    path = Path(ckpt_path).expanduser()
    ckpt = read_checkpoint(path)  # clear error for a missing, damaged or foreign file
    if cfg is not None:
        saved = OmegaConf.create(ckpt["esc50"].get("config", {}))
        differ = [
            f"{k}={v} (checkpoint: {saved_v})"
            for k, v in _identity(cfg).items()
            if (saved_v := OmegaConf.select(saved, k, default=None)) is not None and saved_v != v
        ]
        if differ:
            raise UserError(
                f"{path}: cannot resume, this command differs from the run that saved it: "
                f"{', '.join(differ)}; resume with the original command plus ckpt_path=..."
            )
    return path


def _continue_log_in(run_dir: Path, original: Path) -> None:
    """Point Hydra's log file from the throwaway run folder to the resumed run's log (appending)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir:
            handler.close()
            handler.baseFilename = str(original / Path(handler.baseFilename).name)
            handler.mode = "a"


def _local_rank() -> int:
    """This process's rank on its node: set by Lightning's launcher, torchrun or SLURM; else 0."""
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def train(cfg: DictConfig) -> dict[str, Any]:
    _check_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    resume = resolve_resume(cfg.get("ckpt_path"), Path(cfg.paths.log_dir), cfg)
    original = resume.parent.parent if resume is not None else None
    if original is not None and resume.parent.name == "checkpoints" and (original / ".hydra").is_dir():
        # Continue in the original run directory so checkpoints and TensorBoard curves carry on.
        with open_dict(cfg):
            cfg.paths.output_dir = str(original)
        if run_dir != original:
            _continue_log_in(run_dir, original)
            if run_dir.is_dir() and not any(run_dir.glob("checkpoints/*")):
                shutil.rmtree(run_dir, ignore_errors=True)
        run_dir = original
    if resume is not None:
        log.info("Resuming from %s in %s", resume, run_dir)

    L.seed_everything(cfg.seed, workers=True)
    logmel = build_logmel(cfg)
    datamodule = instantiate(cfg.data, frontend=logmel)
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
    module.run_info = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "data": datamodule.describe(),
        "model_name": cfg.model.name,
    }
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    if not loggers and any(isinstance(c, LearningRateMonitor) for c in callbacks):
        # Lightning refuses a learning-rate monitor without a logger; logger=none means "log nothing".
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    check_time_budget(callbacks, module.scheduler_factory, cfg.trainer.get("max_epochs"))
    if _local_rank() == 0:
        # Check every audio file and build the caches before Lightning launches other processes
        # (DDP): a data problem is then reported once, not also as a broken link on every rank.
        datamodule.prepare_data()
    plugins = [instantiate(p) if isinstance(p, DictConfig) else p for p in cfg.trainer.get("plugins") or []]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())  # never a half-written last.ckpt after kill -9
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins
    )

    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
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
        print_summary(metrics, run_dir, best)
    return metrics
