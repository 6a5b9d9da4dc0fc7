"""The shipped model: small, never saw fold 1, and re-evaluates to the figure README states."""

from __future__ import annotations

import json
import re

from conftest import REPO, run_dirs

from esc50_lightning.build import read_checkpoint

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
    run_train(f"ckpt_path={SHIPPED}", "data.fold=1", script="eval.py", quick=False)
    (run,) = run_dirs(tmp_path / "outputs")
    metrics = json.loads((run / "metrics.json").read_text())
    measured = metrics["test"]["acc"]
    assert abs(measured - stated) < 1e-6
    assert measured > 0.5  # far above chance (0.02) on 400 real clips
    readme = (REPO / "README.md").read_text()
    assert re.search(rf"\b{stated:.4f}\b", readme), "README must state the shipped model's fold-1 accuracy"
