"""trainer=ddp with 2 CPU processes (gloo) on real clips: same validation figures as one process."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
from helpers import command_env, hydra_args, make_subset, run_command, run_dirs
from hydra.utils import instantiate
from omegaconf import OmegaConf

from esc50_lightning.factory import build_logmel, load_classifier


def test_ddp_two_processes_match_a_single_process(esc50_root: Path, tmp_path: Path) -> None:
    # 7 classes x 5 folds: the 7 validation clips split 4 + 3 over the two ranks (batches of 2),
    # so a padding sampler would score one clip twice and change the figures.
    make_subset(esc50_root, tmp_path / "esc50", classes=7)
    env = command_env(tmp_path / "esc50", tmp_path)
    args = hydra_args(
        "train.py",
        "model=cnn4",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.enable_model_summary=false",
        "data.batch_size=5",
        "data.eval_batch_size=2",
        "trainer.precision=32-true",  # as the single-process Trainer below scores
    )
    proc = run_command(args, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    (run,) = run_dirs(tmp_path / "outputs")  # both ranks share one run folder
    metrics = json.loads((run / "metrics.json").read_text())
    predictions = pd.read_csv(run / "predictions_val.csv")
    assert len(predictions) == 7 and predictions.file.is_unique  # every clip once, none dropped

    # Score the saved weights in one process on the same fold.
    module, _ = load_classifier(run / "checkpoints" / "last.ckpt")
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")  # the run's own config, as Hydra wrote it
    assert cfg.trainer.strategy == "ddp"
    cfg.data.dataset.root = str(tmp_path / "esc50")  # as the run's environment had it (ESC50_ROOT)
    cfg.data.cache_dir = env["ESC50_CACHE"]
    datamodule = instantiate(cfg.data, frontend=build_logmel(cfg))
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    (single,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    assert len(datamodule.sets["val"]) == 7
    for name in ("loss", "acc", "precision", "recall", "f1"):
        assert metrics["final"][name] == pytest.approx(single[f"val/{name}"], abs=1e-6), name
    files = [datamodule.table.files[int(r)] for r in module.last_val_outputs[0]]
    assert sorted(files) == sorted(predictions.file)


def test_ddp_reports_bad_data_once_without_tracebacks(esc50_root: Path, tmp_path: Path) -> None:
    names = list(make_subset(esc50_root, tmp_path / "esc50").filename)
    (tmp_path / "esc50" / "audio" / names[0]).write_text("not audio")
    env = command_env(tmp_path / "esc50", tmp_path)
    # Not the tiny run: the whole default run, which stops at the data check.
    args = ["train.py", "model=cnn4", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    proc = run_command(args, env=env)
    assert proc.returncode == 2
    assert proc.stderr.count("error: dataset check failed (1 problem):") == 1
    assert f"{tmp_path / 'esc50' / 'audio' / names[0]}: not a readable audio file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert run_dirs(tmp_path / "outputs") == []
