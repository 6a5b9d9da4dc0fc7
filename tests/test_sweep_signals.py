"""A SIGTERM to a local_parallel sweep stops its worker processes too (Linux: reads /proc)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from helpers import command_env, hydra_args, start_command


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def sweep_then_sigterm(esc50_root: Path, cache_dir: Path, tmp_path: Path, *launcher: str) -> list[int]:
    """Start a two-job local_parallel sweep, SIGTERM its main process once both jobs train, and
    return the worker processes still alive 30 s after it died."""
    env = command_env(esc50_root, tmp_path, cache=cache_dir)
    args = hydra_args("train.py", "-m", "hydra/launcher=local_parallel", *launcher)
    args += [
        "model=cnn4",
        "trainer.max_epochs=1000",
        "+trainer.limit_train_batches=2",
        "logger=none",
        "data.fold=1,2",
    ]
    log = (tmp_path / "sweep.log").open("w")
    sweep = start_command(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and sweep.poll() is None:
            logs = list((tmp_path / "outputs").rglob("train.log"))
            if len(logs) == 2 and all("epoch 1/1000" in p.read_text() for p in logs):
                break
            time.sleep(1)
        else:
            raise AssertionError(
                "the two jobs never started training:\n" + (tmp_path / "sweep.log").read_text()
            )
        workers = _descendants(sweep.pid)
        assert workers, "the sweep runs no worker processes"
        sweep.send_signal(signal.SIGTERM)
        assert sweep.wait(timeout=60) == -signal.SIGTERM
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.5)
        return [pid for pid in workers if _alive(pid)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sweep.pid, signal.SIGKILL)  # whatever is left of this test's process group
        log.close()


def test_sigterm_to_a_local_parallel_sweep_stops_its_workers(
    esc50_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    assert sweep_then_sigterm(esc50_root, cache_dir, tmp_path) == [], "workers went on after the sweep died"
