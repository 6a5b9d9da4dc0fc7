"""Edges a new user hits (issue 39): fast help, quiet and single logs, epochs from 1 in the
trackers, short lines for bad input that leave nothing behind, the report of one run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from helpers import REPO, command_env, hydra_args, run_command, run_dirs

SHIPPED = REPO / "src" / "esc50_lightning" / "pretrained" / "esc50_fold1.ckpt"

# Runs a command as ``python -m``/``python script.py`` would, then names the heavy packages it imported.
PROBE = """
import runpy, sys
target, *args = sys.argv[1:]
sys.argv = [target, *args]
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "lightning", "pandas", "matplotlib"})
print("imported:", ",".join(heavy), file=sys.stderr)
"""
COMMANDS = ["esc50_lightning.predict", "esc50_lightning.export", "esc50_lightning.pack"]
COMMANDS += ["esc50_lightning.report", "esc50_lightning.cache", "train.py", "eval.py"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_and_argument_errors_import_neither_torch_nor_lightning(command):
    """``--help`` (and, for the argparse commands, a missing argument) answers before torch,
    Lightning, pandas or matplotlib load: in about a second, not eight."""
    proc = run_command(["-c", PROBE, command, "--help"], cold=True)
    assert proc.stdout.startswith(("usage: python -m esc50_lightning.", f"python {command} ")), proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "imported:", proc.stderr
    if command.endswith(".py"):
        return
    proc = run_command(["-c", PROBE, command, "--no-such-option"], cold=True)
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and lines[-1] == "imported:", proc.stderr


def test_forwarders_run_the_command(tmp_path):
    """The fast path still runs the command: ``cache list`` on an empty cache folder answers."""
    proc = run_command(["-m", "esc50_lightning.cache", "list", "--cache-dir", str(tmp_path)], check=True)
    assert proc.stdout.strip() == f"no cache entries in {tmp_path}"


# ---- one line per message, epochs from 1 in every tracker --------------------------------------
NOISE = (
    "exists and is not empty",  # the CSV logger on Hydra's run folder
    "Creating initial",  # MLflow's database set-up
    "not found. Creating it",  # MLflow's first experiment, said twice by Lightning
    "anonymous",  # wandb's warning about an argument Lightning passes
    "\x1b[",  # colour codes in a log that is not a terminal
)


def _tiny_run(logger: str, esc50_root: Path, cache_dir: Path, work: Path) -> tuple[str, Path]:
    env = command_env(esc50_root, work, cache=cache_dir)
    # a whole run, quickly: the trackers' records and lines are the point, not the training
    args = hydra_args(
        "train.py", f"logger={logger}", "data.fold=2", "model=cnn4", "+trainer.limit_train_batches=2"
    )
    proc = run_command(args, env=env, check=True)
    (run,) = run_dirs(work / "outputs")
    return proc.stdout + proc.stderr, run


def test_trackers_count_epochs_from_1_and_each_line_prints_once(esc50_root, cache_dir, tmp_path):
    """A one-epoch run logged to TensorBoard, CSV and MLflow (logger=many), its output redirected:
    each tracker reads epoch 1 back; Lightning's lines print once, in the run's log format; none
    of the trackers' set-up warnings appear, nor colour codes."""
    output, run = _tiny_run("many", esc50_root, cache_dir, tmp_path)
    assert output.count("GPU available: False, used: False") == 1, output
    assert "INFO: " not in output  # Lightning's own console handler, plain
    assert not [n for n in NOISE if n in output], output

    rows = pd.read_csv(run / "metrics.csv")
    assert rows.loc[rows["val/loss"].notna(), "epoch"].tolist() == [1.0]
    assert rows.loc[rows["train/loss"].notna(), "epoch"].tolist() == [1.0]
    assert next((run / "checkpoints").glob("epoch*.ckpt")).name.startswith("epoch001-")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {e.value for e in events.Scalars("epoch")} == {1.0}

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (found,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {m.value for m in client.get_metric_history(found.info.run_id, "epoch")} == {1.0}

    # The report of this one run names it by its folder (not "."), per-class rows in the files only.
    out = tmp_path / "report"
    proc = run_command(["-m", "esc50_lightning.report", run, "--out", out], check=True)
    table = pd.read_csv(out / "results.csv")
    assert table.loc[table.row == "run", "run"].tolist() == [run.name]
    assert "| dog |" in (out / "results.md").read_text() and "| dog |" not in proc.stdout


def test_wandb_logs_without_warnings_the_user_cannot_act_on(esc50_root, cache_dir, tmp_path):
    """logger=wandb, output redirected: no anonymous-mode warning, no colour codes, Lightning's
    lines once, and wandb's closing hint as one line of the log naming the offline run to sync."""
    output, run = _tiny_run("wandb", esc50_root, cache_dir, tmp_path)
    assert not [n for n in NOISE if n in output], output
    assert output.count("GPU available: False, used: False") == 1, output
    (offline,) = (run / "wandb").glob("offline-run-*")
    hints = [line for line in output.splitlines() if "wandb sync" in line]
    assert len(hints) == 1 and hints[0].endswith(f"upload it with: wandb sync {offline}"), output
    assert not [line for line in output.splitlines() if line.startswith("wandb: ")], output


# ---- bad input: one short line, nothing left behind -------------------------------------------
def _one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_a_fifo_as_checkpoint_is_refused_without_waiting(esc50_root, tmp_path):
    fifo = tmp_path / "model.ckpt"
    os.mkfifo(fifo)
    clip = sorted((esc50_root / "audio").glob("*.wav"))[0]
    proc = run_command(["-m", "esc50_lightning.predict", "--ckpt", fifo, clip], timeout=120)
    line = _one_line(proc)
    assert proc.returncode == 2 and line.startswith(f"error: {fifo}") and len(line) < 200, line


def test_a_refused_checkpoint_is_one_short_line(esc50_root, tmp_path):
    """A checkpoint holding a Python object: refused in one line that says why, without quoting
    PyTorch's advice to allow-list globals."""
    ckpt = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    ckpt["esc50"]["note"] = argparse.Namespace(a=1)
    path = tmp_path / "objects.ckpt"
    torch.save(ckpt, path)
    clip = sorted((esc50_root / "audio").glob("*.wav"))[0]
    proc = run_command(["-m", "esc50_lightning.predict", "--ckpt", path, clip])
    line = _one_line(proc)
    assert proc.returncode == 2 and line.startswith(f"error: {path}: refused"), line
    # short whatever the path: the reason in well under 200 characters, no PyTorch advice quoted
    assert len(line) - len(str(path)) < 160 and "add_safe_globals" not in line, line


def test_a_too_short_clip_gets_no_label(tmp_path):
    short = tmp_path / "click.wav"
    sf.write(short, np.array([0.5], dtype=np.float32), 44100)
    proc = run_command(["-m", "esc50_lightning.predict", short])
    line = _one_line(proc)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    assert line.startswith(f"error: {short}: too short to judge (0.000 s;"), line


def test_eval_mistakes_are_one_line_and_leave_no_folder(esc50_root, cache_dir, tmp_path):
    """A symlink loop as the checkpoint, and a dataset whose class names differ from the
    checkpoint's: one line each, and no outputs/eval/runs/<run> (nor an empty outputs/) left."""
    env = command_env(esc50_root, tmp_path, cache=cache_dir)
    loop = tmp_path / "loop.ckpt"
    loop.symlink_to(loop)
    proc = run_command(["eval.py", f"ckpt_path={loop}"], env=env)
    assert proc.returncode == 2 and "loop" in _one_line(proc)
    assert not (tmp_path / "outputs").exists(), list((tmp_path / "outputs").rglob("*"))

    renamed = tmp_path / "renamed"
    (renamed / "meta").mkdir(parents=True)
    (renamed / "audio").symlink_to(esc50_root / "audio")
    meta = pd.read_csv(esc50_root / "meta" / "esc50.csv")
    meta.loc[meta.category == "rooster", "category"] = "cockerel"
    meta.to_csv(renamed / "meta" / "esc50.csv", index=False)
    proc = run_command(["eval.py", f"ckpt_path={SHIPPED}", f"data.root={renamed}"], env=env)
    line = _one_line(proc)
    assert proc.returncode == 2, proc.stderr
    assert "is 'cockerel' here but 'rooster' in checkpoint" in line and "names differ" in line, line
    assert not (tmp_path / "outputs").exists(), list((tmp_path / "outputs").rglob("*"))


def test_text_for_a_number_says_the_key_wants_one(run_train, tmp_path):
    proc = run_train("model.net.dropout=abc", check=False)
    line = _one_line(proc)
    assert proc.returncode == 2 and line.startswith("error: model.net.dropout=abc: wants a number (float"), (
        line
    )
    assert run_dirs(tmp_path / "outputs") == []
