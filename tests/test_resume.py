"""kill -9 in the middle of training, then resume: same run folder, epochs and TensorBoard steps go on."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    command_env,
    hydra_args,
    make_subset,
    run_command,
    run_dirs,
    snapshot,
    start_command,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# A tiny real-clip run (debug=tiny, on a copy of 5 classes x 5 folds: 20 training clips, 5 validation
# clips), 4 steps per epoch; every call names its trainer.max_epochs.
OVERRIDES = [
    "model=cnn4",
    "trainer.enable_model_summary=false",
    "data.batch_size=5",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture
def tiny_env(esc50_root: Path, tmp_path: Path) -> dict[str, str]:
    make_subset(esc50_root, tmp_path / "esc50", classes=5)
    return command_env(tmp_path / "esc50", tmp_path)


def _train(env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    proc = run_command(hydra_args("train.py", *OVERRIDES, *overrides), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _epoch_of(ckpt: Path) -> int | None:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # not written yet
        return None


def _val_steps(event_file: Path) -> list[int]:
    acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars("val/loss")] if "val/loss" in acc.Tags()["scalars"] else []


def test_kill_9_then_resume_continues_the_run(tiny_env: dict[str, str], tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    before = snapshot(tmp_path / "esc50")
    proc = start_command(
        hydra_args("train.py", *OVERRIDES, "trainer.max_epochs=500"),
        env=tiny_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        killed_epoch = None
        while time.monotonic() < deadline and proc.poll() is None:
            last = next(outputs.glob("train/runs/*/checkpoints/last.ckpt"), None)
            if last is not None and (epoch := _epoch_of(last)) is not None and epoch >= 1:
                proc.send_signal(signal.SIGKILL)
                killed_epoch = epoch
                break
            time.sleep(0.2)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed_epoch is not None, "training never saved an epoch >= 1 checkpoint"
    assert proc.returncode == -signal.SIGKILL

    (run,) = run_dirs(outputs)
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)  # whole, despite kill -9
    saved_epoch, saved_step = saved["epoch"], saved["global_step"]
    assert saved_epoch >= killed_epoch
    assert not (run / "metrics.json").exists()

    # Resume from the explicit path: the run goes on from the next epoch in the same folder.
    target = saved_epoch + 3
    _train(tiny_env, f"ckpt_path={last}", f"trainer.max_epochs={target}")
    assert run_dirs(outputs) == [run], "resuming must not leave a second run folder"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == target
    assert metrics["final"]["epoch"] == target
    resumed = torch.load(last, map_location="cpu", weights_only=False)
    assert resumed["epoch"] == target - 1
    history = [h["epoch"] for h in resumed["esc50"]["history"]]
    assert history == list(range(1, target + 1)), history
    assert not list((run / "checkpoints").glob(".*.tmp")), "a finished run leaves no temp checkpoint"

    # TensorBoard: one folder; the resumed event file's steps start after the checkpoint, not at 0.
    files = sorted((run / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2, files
    first, second = _val_steps(files[0]), _val_steps(files[1])
    assert first and min(first) <= saved_step
    assert second and min(second) > saved_step
    assert len(second) == target - 1 - saved_epoch  # one validation point per resumed epoch

    # ckpt_path=latest finds this run (same model, dataset, fold) and trains one more epoch.
    _train(tiny_env, "ckpt_path=latest", f"trainer.max_epochs={target + 1}")
    assert run_dirs(outputs) == [run]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == target + 1
    files = sorted((run / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 3 and min(_val_steps(files[2])) > max(second)
    assert "Resuming from" in (run / "train.log").read_text(), "the resumed session logs into the run's log"
    assert snapshot(tmp_path / "esc50") == before, "the dataset folder must only be read"


def test_resume_refuses_a_checkpoint_of_another_model(tiny_env: dict[str, str], tmp_path: Path) -> None:
    _train(tiny_env, "trainer.max_epochs=1")
    (run,) = run_dirs(tmp_path / "outputs")
    last = run / "checkpoints" / "last.ckpt"
    args = hydra_args("train.py", *OVERRIDES, "model=cnn8", f"ckpt_path={last}", "trainer.max_epochs=2")
    proc = run_command(args, env=tiny_env)
    assert proc.returncode == 2
    assert f"error: {last}: cannot resume" in proc.stderr
    assert "model.name=cnn8 (checkpoint: cnn4)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert run_dirs(tmp_path / "outputs") == [run], "the refused command leaves no run folder"
    # ... and latest finds nothing for a model that never ran.
    proc = run_command(hydra_args("train.py", *OVERRIDES, "model=cnn8", "ckpt_path=latest"), env=tiny_env)
    assert proc.returncode == 2
    assert "error: ckpt_path=latest: no checkpoints/last.ckpt under" in proc.stderr
    assert "model.name=cnn8" in proc.stderr
