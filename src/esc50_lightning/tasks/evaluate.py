"""Score a trained checkpoint once on one fold: deterministic, no augmentation, results in metrics.json."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from esc50_lightning.checkpoints.record import load_classifier
from esc50_lightning.errors import UserError
from esc50_lightning.factory import KEEP_EVAL_CROP, crop_from_config
from esc50_lightning.tasks.results import print_summary, save_metrics, write_predictions
from esc50_lightning.training.display import ProgressBar, quiet_lightning

log = logging.getLogger(__name__)


def seen_folds(data: dict[str, Any]) -> list[int]:
    """Folds a checkpoint learned from or was selected on: scores there are not evaluations."""
    splits = data["splits"]
    seen = set(splits["train"])
    if data["protocol"] == "holdout":
        seen |= set(splits["val"])  # the checkpoint was chosen on it
    return sorted(int(f) for f in seen)


def eval_data_config(trained: dict[str, Any], cfg: DictConfig, fold: int) -> DictConfig:
    """The checkpoint's data config with the fold, data location and loader options of this run."""
    data = OmegaConf.create(copy.deepcopy(trained))
    with open_dict(data):
        data.fold = fold
        if cfg.data.dataset.get("root"):
            data.dataset.root = str(cfg.data.dataset.root)
        data.cache_dir = cfg.data.cache_dir
        data.limit_per_class = cfg.data.limit_per_class
        data.eval_batch_size = cfg.data.eval_batch_size
        data.num_workers = cfg.data.num_workers
        data.device_resident = bool(cfg.data.get("device_resident", False))
    return data


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    quiet_lightning()
    if not cfg.get("ckpt_path"):
        raise UserError("ckpt_path is required: python eval.py ckpt_path=PATH [data.fold=K] (see --help)")
    ckpt_path = Path(str(cfg.ckpt_path)).expanduser().resolve()
    run_dir = Path(cfg.paths.output_dir)
    module, info = load_classifier(ckpt_path)
    crop, crops = cfg.get("eval_crop", KEEP_EVAL_CROP), cfg.get("eval_crops", KEEP_EVAL_CROP)
    if (crop, crops) != (KEEP_EVAL_CROP, KEEP_EVAL_CROP):
        module.features.set_eval_crop(
            module.features.eval_crop if crop == KEEP_EVAL_CROP else crop_from_config(crop),
            None if crops == KEEP_EVAL_CROP else crops,
        )
    trained = info["data"]
    fold = int(trained["splits"]["test"][0] if cfg.data.fold is None else cfg.data.fold)
    seen = seen_folds(trained)
    if fold in seen and not cfg.allow_train_fold:
        role = "trained or selected" if trained["protocol"] == "holdout" else "trained"
        raise UserError(
            f"{ckpt_path}: data.fold={fold} is a fold this checkpoint was {role} on "
            f"(folds {seen}, protocol {trained['protocol']}); pick another fold, "
            "or pass allow_train_fold=true to score it anyway"
        )

    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in the run's config
    data_cfg = eval_data_config(info["config"]["data"], cfg, fold)
    datamodule = instantiate(data_cfg, frontend=module.features.logmel)
    if datamodule.class_names != module.class_names:
        raise UserError(
            f"{datamodule.spec.csv_path}: its {datamodule.num_classes} classes differ from the "
            f"{len(module.class_names)} classes checkpoint {ckpt_path} was trained on"
        )
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer = L.Trainer(
        **trainer_cfg,
        callbacks=[ProgressBar()] if trainer_cfg.get("enable_progress_bar", True) else [],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
    )
    trainer.test(module, datamodule=datamodule, verbose=False)

    history = info.get("history") or []
    test = {k.split("/", 1)[1]: v for k, v in module.test_results.items()}
    metrics = {
        "task": "eval",
        "checkpoint": str(ckpt_path),
        "checkpoint_epoch": history[-1]["epoch"] if history else None,
        "model": info.get("model_name"),
        "dataset": trained["dataset"],
        "fold": fold,
        "clips": len(datamodule.sets["test"]),
        "input": list(module.features.eval_shape),
        "eval_crops": module.features.eval_crops,
        "trained": {k: trained[k] for k in ("protocol", "fold", "splits")},
        "on_seen_fold": fold in seen,
        "test": test,
        "headline": {"source": f"checkpoint scored once on fold {fold}", **test},
    }
    if trainer.is_global_zero:
        save_metrics(run_dir / "metrics.json", metrics)
        if module.last_test_outputs is not None:
            table = datamodule.table
            write_predictions(
                run_dir / "predictions_test.csv",
                module.last_test_outputs,
                table.files,
                table.labels,
                module.class_names,
            )
        print_summary(metrics, run_dir)
    return metrics
