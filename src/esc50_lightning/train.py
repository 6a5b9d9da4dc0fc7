"""Training entry point: build what the config names, fit, test (holdout), write results."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from esc50_lightning.build import build_logmel, build_module, read_checkpoint
from esc50_lightning.errors import UserError
from esc50_lightning.results import print_summary, run_metrics, save_metrics, write_predictions

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


def resolve_resume(ckpt_path: str | None, log_dir: Path) -> Path | None:
    """``ckpt_path=latest`` picks the newest ``last.ckpt`` under the outputs folder."""
    if not ckpt_path:
        return None
    if ckpt_path == "latest":
        candidates = sorted(log_dir.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise UserError(f"ckpt_path=latest: no last.ckpt under {log_dir}")
        return candidates[-1]
    path = Path(ckpt_path).expanduser()
    read_checkpoint(path)  # clear error for a missing or foreign file
    return path


def train(cfg: DictConfig) -> dict[str, Any]:
    _check_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    resume = resolve_resume(cfg.get("ckpt_path"), Path(cfg.paths.log_dir))
    if resume is not None:
        # Continue in the original run directory so checkpoints and TensorBoard curves carry on.
        original = resume.parent.parent
        with open_dict(cfg):
            cfg.paths.output_dir = str(original)
        if run_dir != original and run_dir.is_dir() and not any(run_dir.glob("checkpoints/*")):
            shutil.rmtree(run_dir, ignore_errors=True)
        run_dir = original
        log.info("Resuming from %s in %s", resume, run_dir)

    L.seed_everything(cfg.seed, workers=True)
    logmel = build_logmel(cfg)
    datamodule = instantiate(cfg.data, frontend=logmel)
    class_names = datamodule.class_names  # reads and checks the CSV
    module = build_module(cfg, class_names, logmel)
    module.run_info = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "data": datamodule.describe(),
        "model_name": cfg.model.name,
    }
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    if trainer.interrupted:
        raise UserError("training interrupted; resume with ckpt_path=latest")

    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") or None
    if datamodule.protocol == "holdout" and cfg.trainer.get("max_epochs", 1) != 0:
        history = list(module.history)  # loading the best checkpoint would rewind it
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        module.history = history

    metrics = run_metrics(module.history, module.test_results, module.run_info)
    metrics["best_checkpoint"] = best
    if trainer.is_global_zero:
        table = datamodule.table
        save_metrics(run_dir / "metrics.json", metrics)
        for name, outputs in (("val", module.last_val_outputs), ("test", module.last_test_outputs)):
            if outputs is not None and not (name == "test" and datamodule.protocol == "cv"):
                write_predictions(
                    run_dir / f"predictions_{name}.csv", outputs, table.files, table.labels, class_names
                )
        print_summary(metrics, run_dir, best)
    return metrics
