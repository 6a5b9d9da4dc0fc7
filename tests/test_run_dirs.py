"""Run folders: two trainings started in the same second get a folder each."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import command_env, compose_config, hydra_args, start_command

from esc50_lightning.hydra_ext.run_dirs import claim_dir

TWO_BATCHES = ["+trainer.limit_train_batches=2"]  # a whole run, quickly: the folders are the point


def test_a_taken_name_gets_the_next_suffix(tmp_path: Path) -> None:
    base = tmp_path / "outputs" / "train" / "runs" / "2026-01-01_00-00-00_esc50_vgg8_fold1"
    claim = claim_dir.__wrapped__  # unmemoised: each call is another process's claim
    assert claim(str(base)) == str(base)
    assert claim(str(base)) == f"{base}_2"
    assert claim(str(base)) == f"{base}_3"
    assert sorted(p.name for p in base.parent.iterdir()) == [base.name, f"{base.name}_2", f"{base.name}_3"]


def test_one_process_keeps_one_folder(tmp_path: Path) -> None:
    # Hydra resolves the run dir more than once per run: every read must give the same folder.
    base = str(tmp_path / "run")
    assert claim_dir(base) == claim_dir(base) == base
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_train_and_eval_name_their_run_folders_through_it() -> None:
    for config in ("train", "eval"):
        cfg = compose_config(config=config, hydra=True)
        assert cfg.hydra.run._get_node("dir")._value().startswith("${unique_dir:"), config


def test_two_trainings_started_together_do_not_share_a_folder(esc50_root, cache_dir, tmp_path) -> None:
    env = command_env(esc50_root, tmp_path, cache=cache_dir, OMP_NUM_THREADS="1")
    base = tmp_path / "outputs" / "train" / "runs" / "same_second"
    procs = [
        start_command(
            hydra_args("train.py", *TWO_BATCHES, f"seed={seed}", f"hydra.run.dir=${{unique_dir:{base}}}"),
            env=env,
            stderr=subprocess.STDOUT,
        )
        for seed in (1, 2)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    runs = sorted(base.parent.iterdir())
    assert [p.name for p in runs] == ["same_second", "same_second_2"]
    seeds = set()
    for run in runs:
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        seeds |= {s for s in (1, 2) if f"seed={s}" in overrides}
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert json.loads((run / "metrics.json").read_text())["fold"] == 1
        log = (run / "train.log").read_text()
        assert log.count("Headline") == 1, log  # one run's log, not two interleaved
    assert seeds == {1, 2}
