"""Score a trained checkpoint once on one fold: deterministic, no augmentation, results in metrics.json."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

from esc50_lightning.errors import UserError
from esc50_lightning.factory import KEEP_EVAL_CROP, crop_from_config, instantiate_setting, load_classifier
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


def eval_data_config(cfg: DictConfig, trained: dict[str, Any], fold: int, where: str) -> DictConfig:
    """This command's data config (never the checkpoint's: it may name any folder or address) for
    ``fold``, checked against the dataset the checkpoint was trained on."""
    data = copy.deepcopy(cfg.data)
    name, recorded = data.dataset.name, trained["dataset"]
    if name != recorded:
        raise UserError(
            f"{where}: trained on dataset {recorded}, but this command scores on {name}: "
            f"choose data={recorded} (or your data config for it) and its data.root"
        )
    with open_dict(data):
        # clips are decoded as the network heard them in training (resampled, cut or padded):
        # numbers from the verified record, not paths
        data.dataset.sample_rate = trained["sample_rate"]
        data.dataset.clip_seconds = trained["clip_seconds"]
        data.fold = fold
        data.protocol = trained["protocol"]
        data.load_splits = ["test"]  # decode and cache only the fold scored
    return data


def check_class_names(datamodule: Any, trained: list[str], ckpt_path: Path) -> None:
    """The data's classes must be the checkpoint's, in the same order: say how they differ."""
    ours = datamodule.class_names
    if ours == trained:
        return
    csv = datamodule.spec.csv_path
    if len(ours) != len(trained):
        raise UserError(
            f"{csv}: {len(ours)} classes, but checkpoint {ckpt_path} was trained on {len(trained)}"
        )
    n = next(i for i, (a, b) in enumerate(zip(ours, trained, strict=True)) if a != b)
    same_set = sorted(ours) == sorted(trained)
    raise UserError(
        f"{csv}: class {n} is {ours[n]!r} here but {trained[n]!r} in checkpoint {ckpt_path}"
        + ("; the same names in another order" if same_set else "; the class names differ")
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    quiet_lightning()
    if not cfg.get("ckpt_path"):
        raise UserError("ckpt_path is required: python eval.py ckpt_path=PATH [data.fold=K] (see --help)")
    ckpt_path = Path(str(cfg.ckpt_path)).expanduser().absolute()
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
    data_cfg = eval_data_config(cfg, trained, fold, str(ckpt_path))
    datamodule = instantiate_setting(data_cfg, "data", frontend=module.features.logmel)
    check_class_names(datamodule, module.class_names, ckpt_path)
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
