"""The one way tests compose a config: the package's own Hydra configs (conf/), as the commands do."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from helpers.paths import CONF_DIR


def compose_config(*overrides: str, config: str = "train", hydra: bool = False) -> DictConfig:
    """``config`` (train or eval) composed with ``overrides``; ``hydra`` keeps the ``hydra`` node
    (launchers, callbacks, run dirs). Nothing is instantiated and no HydraConfig is set."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(config, overrides=list(overrides), return_hydra_config=hydra)
