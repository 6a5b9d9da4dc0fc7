"""Evaluate a checkpoint on one fold: `python eval.py ckpt_path=PATH data.fold=K` (see README)."""

import hydra
from omegaconf import DictConfig

from esc50_lightning.errors import UserError
from esc50_lightning.hydra_ext.task import guarded_task, run_hydra_main


def _evaluate(cfg: DictConfig) -> dict:
    if not cfg.get("ckpt_path"):
        raise UserError(
            "ckpt_path is required: python eval.py ckpt_path=PATH, a checkpoint train.py wrote "
            "(e.g. outputs/train/runs/<run>/checkpoints/last.ckpt)"
        )
    # Imported here, not at the top: a config mistake is reported before torch and Lightning load.
    from esc50_lightning.tasks.evaluate import evaluate

    return evaluate(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    metrics = guarded_task(_evaluate, cfg)
    return metrics["test"]["acc"] if metrics else None


if __name__ == "__main__":
    run_hydra_main(main)  # config mistakes Hydra finds: one line, exit 2 (hydra_ext/task.py)
