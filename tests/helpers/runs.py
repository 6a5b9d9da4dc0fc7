"""Tiny training runs that several tests read: trained once per session, whatever the workers."""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from helpers.commands import command_env, hydra_args, run_command, run_dirs
from helpers.shared import build_once


@dataclass(frozen=True)
class TrainedRun:
    """What ``python train.py debug=tiny <overrides>`` left: read it, never write into it (copy
    ``outputs`` first, e.g. to write a report beside the runs)."""

    outputs: Path  # the command's ESC50_OUTPUTS
    runs: list[Path]  # its run folders (one per job of a -m sweep), in path order
    proc: subprocess.CompletedProcess  # exit status 0, stdout and stderr as printed

    @property
    def run(self) -> Path:
        """The single run folder of a run without -m."""
        if len(self.runs) != 1:
            raise AssertionError(f"expected one run folder under {self.outputs}, found {self.runs}")
        return self.runs[0]


def train_once(base: Path, root: Path, cache: Path, overrides: tuple[str, ...]) -> TrainedRun:
    """``python train.py debug=tiny <overrides>`` on the dataset at ``root``, run under ``base`` the
    first time these arguments are asked for in the session and read back every later time."""
    key = hashlib.sha1("\0".join([str(root), *overrides]).encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9]+", "_", " ".join(o for o in overrides if "/" not in o))[:40]
    argv = hydra_args("train.py", *overrides)

    def build(work: Path) -> None:
        proc = run_command(argv, env=command_env(root, work, cache=cache), timeout=900)
        assert proc.returncode == 0, f"train.py {' '.join(argv[1:])} failed:\n{proc.stdout}\n{proc.stderr}"
        (work / "stdout.txt").write_text(proc.stdout)
        (work / "stderr.txt").write_text(proc.stderr)

    work = build_once(base / f"{slug}-{key}", build)
    proc = subprocess.CompletedProcess(
        argv, 0, (work / "stdout.txt").read_text(), (work / "stderr.txt").read_text()
    )
    return TrainedRun(outputs=work / "outputs", runs=run_dirs(work / "outputs"), proc=proc)
