"""Evaluate a checkpoint on one fold: `python eval.py ckpt_path=PATH data.fold=K` (see README)."""

import hydra
from omegaconf import DictConfig

from esc50_lightning.hydra_ext.task import guarded_task
from esc50_lightning.tasks.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="pkg://esc50_lightning.conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    metrics = guarded_task(evaluate, cfg)
    return metrics["test"]["acc"] if metrics else None


if __name__ == "__main__":
    main()
