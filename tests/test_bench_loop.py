"""Smoke test of ``python -m benchmarks.loop``: framework vs bare loop on real clips.

Timings are never asserted: only that both sides ran every epoch and the report adds up.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import TINY, command_env, run_command

from benchmarks import loop as bench_loop
from benchmarks.loop import side_order


def test_bench_loop_times_both_sides_and_reports_their_ratio(
    esc50_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    env = command_env(esc50_root, tmp_path, cache=cache_dir, OMP_NUM_THREADS="1")
    out = tmp_path / "loop.json"
    # The bench sets trainer.max_epochs itself (--epochs), after these overrides.
    overrides = [TINY, "model=cnn4", "augmentation=mixup", "optim=adamw_onecycle", "features.crop=[64,128]"]
    args = ["-m", "benchmarks.loop", "--epochs", "2", "--rounds", "1", "--json", str(out)]
    proc = run_command([*args, *overrides], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = json.loads(out.read_text())
    assert raw["order"] == ["bare", "framework"]
    (framework,), (bare,) = raw["framework_runs_s"], raw["bare_loop_runs_s"]
    assert len(framework) == len(bare) == 2
    assert all(s > 0 for s in framework + bare)
    # the bare loop trains and validates: one line per epoch with an accuracy
    assert len(re.findall(r"bare loop: epoch \d: [\d.]+ s, val acc [01]\.\d{3}", proc.stdout)) == 2
    ratio = re.search(r"\| ratio \| ([\d.]+)× \|", proc.stdout)
    assert ratio and abs(float(ratio.group(1)) - raw["framework_s"] / raw["bare_loop_s"]) < 1e-3
    assert re.search(r"Target: framework ≤ 1\.05× the bare loop: (met|NOT met)", proc.stdout)


def test_bench_loop_needs_two_epochs(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_loop.main(["--epochs", "1"])
    assert exit_info.value.code == 2
    assert "error: --epochs 1: give at least 2" in capsys.readouterr().err


def test_rounds_alternate_sides_abba() -> None:
    assert side_order(1) == ["bare", "framework"]
    assert side_order(2) == ["bare", "framework", "framework", "bare"]
