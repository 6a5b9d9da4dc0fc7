"""The shipped model: small, never saw fold 1, and re-evaluates to the figure README states."""

from __future__ import annotations

import json
import re

from helpers import REPO, compose_config, run_dirs

from esc50_lightning.checkpoints.record import read_checkpoint
from esc50_lightning.factory import build_module

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


def test_the_shipped_recipe_records_what_the_shipped_model_holds():
    """``python train.py experiment=vgg8_bc_hour`` is the shipped model's documented command: the
    run record it writes names the same network, settings and features as the shipped file's."""
    shipped = read_checkpoint(SHIPPED)["esc50"]
    cfg = compose_config("experiment=vgg8_bc_hour")
    module = build_module(cfg, shipped["data"]["class_names"], data=shipped["data"])
    ours = module.run_info
    assert ours["net"] == shipped["net"] == {"class": "vgg8", "kwargs": ours["net"]["kwargs"]}
    assert ours["features"] == shipped["features"]
    assert ours["seed"] == shipped["seed"] == 42
    # the shipped model trained in float32 (before precision followed the machine)
    assert shipped["precision"] == "32-true"
