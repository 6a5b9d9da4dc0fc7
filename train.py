"""Train a model on a folded audio dataset: `python train.py model=cnn8 data.fold=1` (see README)."""

import hydra
from omegaconf import DictConfig

from esc50_lightning.hydra_ext.task import guarded_task, run_hydra_main


def _train(cfg: DictConfig) -> dict:
    # Imported here, not at the top: a config mistake is reported before torch and Lightning load.
    if cfg.get("hparams_search"):
        from esc50_lightning.tasks.checks import check_train_config
        from esc50_lightning.tasks.search import search

        check_train_config(cfg)  # refuses a search under data.protocol=cv, among others
        return search(cfg)
    from esc50_lightning.tasks.train import train

    return train(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = guarded_task(_train, cfg)
    return metrics.get("headline", {}).get("acc") if metrics else None


if __name__ == "__main__":
    run_hydra_main(main)  # config mistakes Hydra finds: one line, exit 2 (hydra_ext/task.py)
