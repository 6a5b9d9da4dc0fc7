"""hydra/callbacks=ensemble: a sweep whose runs become one ensemble per held-out fold, scored on
real fold-1 clips the way eval.py scores any checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import compose_config, run_dirs
from hydra.utils import instantiate
from omegaconf import open_dict

from esc50_lightning.checkpoints.record import read_checkpoint

# One epoch of two batches, validated (the recipe validates every 5th epoch).
FAST = ["+trainer.limit_train_batches=2", "trainer.check_val_every_n_epoch=1"]


def test_sweep_ends_with_its_runs_ensembled_and_scored(run_train, tmp_path: Path) -> None:
    proc = run_train(
        "-m",
        "experiment=vgg8_bc_hour",
        "hydra/callbacks=ensemble",
        "hydra/launcher=local_parallel",
        "seed=1,2",
        *FAST,
    )
    members = run_dirs(tmp_path / "outputs" / "train" / "multiruns")
    assert len(members) == 2
    for run in members:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["epochs"] == 1 and metrics["fold"] == 1
    (sweep,) = {run.parent for run in members}
    out = sweep / "ensemble_fold1"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "ensemble of 2 (vgg8, vgg8)"
    assert metrics["fold"] == 1 and metrics["clips"] == 50  # 1 clip per class of fold 1
    assert metrics["trained"]["splits"]["train"] == [2, 3, 4, 5]
    info = read_checkpoint(out / "ensemble.ckpt")["esc50"]
    assert sorted(m["seed"] for m in info["members"]) == [1, 2]
    assert [m["source"] for m in info["members"]] == ["last.ckpt", "last.ckpt"]  # names, no folders

    # its figures are those of its own predictions, and of eval.py run on its checkpoint
    predictions = pd.read_csv(out / "predictions_test.csv")
    assert len(predictions) == 50
    hits = (predictions.prediction == predictions.target).mean()
    assert hits == pytest.approx(metrics["test"]["acc"], abs=1e-6)
    assert f"{metrics['test']['acc']:.4f}" in proc.stdout  # the table printed at the end
    evaluation = [
        f"ckpt_path={out / 'ensemble.ckpt'}",
        "data.limit_per_class=1",
        "trainer.enable_progress_bar=false",
    ]
    shown = run_train(*evaluation, script="eval.py", tiny=False).stdout
    assert "ensemble.ckpt" in shown and "epoch None" not in shown  # members' epochs differ: none shown
    (scored,) = run_dirs(tmp_path / "outputs" / "eval")
    again = json.loads((scored / "metrics.json").read_text())
    assert again["clips"] == 50 and again["test"] == metrics["test"]


def test_single_run_of_the_ensemble_recipe_says_to_sweep(caplog: pytest.LogCaptureFixture) -> None:
    # Hydra calls on_run_start only for a run without -m; the callback comes from hydra/callbacks=ensemble.
    plain = compose_config("hydra/callbacks=ensemble", hydra=True)
    # a sweep config that names its seeds (hydra.sweeper.params) is told which to train
    named = plain.copy()
    with open_dict(named):
        named.hydra.sweeper.params = {"seed": "6,7"}
    for cfg in (named, plain):
        instantiate(plain.hydra.callbacks.ensemble).on_run_start(cfg)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "this config averages a sweep's runs into an ensemble, but this is a single run (seed 42): "
        "add -m to train all members (seeds 6,7) and score their ensemble",
        "this config averages a sweep's runs into an ensemble, but this is a single run (seed 42): "
        "add -m to train several seeds (e.g. seed=1,2) and score their ensemble",
    ]
