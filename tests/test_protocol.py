"""Honest evaluation: the holdout protocol tests once with the checkpoint chosen on validation."""

from __future__ import annotations

import json

import lightning as L
import torch
from helpers import compose_config

from esc50_lightning.data import FoldedAudioDataModule
from esc50_lightning.factory import load_classifier


def test_holdout_reports_test_fold_with_checkpoint_selected_on_validation(holdout_run, esc50_root, cache_dir):
    run = holdout_run  # train.py debug=tiny data.protocol=holdout data.fold=2 trainer.max_epochs=2 model=cnn4
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol"] == "holdout"
    assert metrics["splits"] == {"train": [3, 4, 5], "val": [1], "test": [2]}
    assert metrics["best"]["selected_on"] == "validation fold"
    assert metrics["headline"]["source"].startswith("test fold")
    assert metrics["headline"]["acc"] == metrics["test"]["acc"]
    assert metrics["best"]["loss"] <= metrics["final"]["loss"]

    # Re-evaluate the selected checkpoint on the test fold: the logged test figures must match.
    module, info = load_classifier(metrics["best_checkpoint"])
    assert info["data"]["protocol"] == "holdout"
    assert f"epoch{metrics['best']['epoch']:03d}" in metrics["best_checkpoint"]
    dm = FoldedAudioDataModule(
        dataset={**compose_config().data.dataset, "root": str(esc50_root)},
        fold=2,
        protocol="holdout",
        limit_per_class=1,
        cache_dir=str(cache_dir),
        frontend=module.features.logmel,
    )
    trainer = L.Trainer(  # at the run's own precision (trainer.precision=auto: the machine's choice)
        accelerator="cpu",
        precision=metrics["precision"],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(module, datamodule=dm, verbose=False)
    for name in ("acc", "f1", "loss"):
        assert abs(module.test_results[f"test/{name}"] - metrics["test"][name]) < 1e-5, name
    test_rows = (run / "predictions_test.csv").read_text().splitlines()
    assert len(test_rows) == 1 + 50
    assert torch.is_tensor(module.last_test_outputs[1])
