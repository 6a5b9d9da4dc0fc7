"""The shipped model: small, never saw fold 1, and re-evaluates to the figure README states."""

from __future__ import annotations

import json
import re

from helpers import REPO, compose_config, run_dirs
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from esc50_lightning.checkpoints.record import read_checkpoint

SHIPPED = REPO / "src" / "esc50_lightning" / "pretrained" / "esc50_fold1.ckpt"
RECORD = SHIPPED.with_suffix(".json")


def test_shipped_checkpoint_is_slim_and_never_trained_on_fold_1():
    assert SHIPPED.stat().st_size <= 10 * 1024 * 1024
    ckpt = read_checkpoint(SHIPPED)
    assert set(ckpt) == {"state_dict", "esc50", "epoch"}  # no optimiser or callback state
    data = ckpt["esc50"]["data"]
    assert data["fold"] == 1 and data["protocol"] == "cv"
    assert 1 not in data["splits"]["train"]
    assert data["splits"]["train"] == [2, 3, 4, 5]


def test_shipped_model_reproduces_its_stated_fold1_accuracy(run_train, tmp_path):
    stated = json.loads(RECORD.read_text())["fold1_accuracy"]
    run_train(f"ckpt_path={SHIPPED}", "data.fold=1", script="eval.py", tiny=False)
    (run,) = run_dirs(tmp_path / "outputs")
    metrics = json.loads((run / "metrics.json").read_text())
    measured = metrics["test"]["acc"]
    assert abs(measured - stated) < 1e-6
    assert measured > 0.5  # far above chance (0.02) on 400 real clips
    readme = (REPO / "README.md").read_text()
    assert re.search(rf"\b{stated:.4f}\b", readme), "README must state the shipped model's fold-1 accuracy"


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_shipped_recipe_composes_the_config_the_shipped_model_trained_with():
    """``python train.py experiment=vgg8_bc_hour`` is the shipped model's documented command: it must
    compose, key for key, the config recorded in the checkpoint (trained as ``cpu_hour`` before the
    recipes were renamed), except where the run's folders, the dataset and the cache lived."""
    recorded = read_checkpoint(SHIPPED)["esc50"]["config"]
    cfg = compose_config("experiment=vgg8_bc_hour", hydra=True)
    HydraConfig.instance().set_config(cfg)
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra")
    composed = OmegaConf.create(plain)
    composed.paths.output_dir = recorded["paths"]["output_dir"]
    composed.data.dataset.root = recorded["data"]["dataset"]["root"]
    composed.paths.cache_dir = recorded["paths"]["cache_dir"]
    ours, theirs = _flat(OmegaConf.to_container(composed, resolve=True)), _flat(recorded)
    # new in 1.0, where the recorded config holds the same widths as numbers
    assert (ours.pop("features.mask_width.freq"), ours.pop("features.mask_width.time")) == (8, 24)
    # new in 1.0 and off unless its patience is set
    early = {k: ours.pop(k) for k in [k for k in ours if k.startswith("callbacks.early_stopping.")]}
    assert early["callbacks.early_stopping.patience"] is None
    # new since 1.0, off by default (the data served from the host, the learning rate as written)
    assert ours.pop("data.device_resident") is False and ours.pop("optim.lr_scaling") is None
    assert ours.pop("optim.reference_batch_size") == theirs["data.batch_size"] == 32
    assert theirs["augmentation.spec_augment.freq_mask_width"] == 8
    # new since 1.0: test-time averaging, off (one cut per clip)
    assert ours.pop("features.eval_crops") == 1
    # the EMA callback: Lightning's, keeping its update count on the host (same class name and state)
    assert theirs.pop("callbacks.ema._target_") == "lightning.pytorch.callbacks.WeightAveraging"
    assert ours.pop("callbacks.ema._target_") == "esc50_lightning.training.ema.WeightAveraging"
    differ = {
        k: (theirs.get(k), ours.get(k)) for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k)
    }
    assert not differ, differ
