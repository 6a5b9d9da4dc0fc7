"""The warm-up + cosine learning-rate schedule (optim=adamw_cosine), against a hand computation,
and its floor (``final_lr_fraction``, experiment=vgg8_bc_hour)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import run_dirs

from esc50_lightning.errors import UserError
from esc50_lightning.training.schedules import warmup_cosine


def rates(total_steps: int, **kwargs: float) -> list[float]:
    """The learning rate of every optimiser step, for a peak rate of 1."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(optimizer, total_steps, **kwargs)
    seen = []
    for _ in range(total_steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


@pytest.mark.parametrize("floor", [0.0, 0.2])
def test_warm_up_then_cosine_down_to_the_floor(floor: float) -> None:
    lr = rates(1000, warmup_fraction=0.1, final_lr_fraction=floor)
    # Warm-up: linear over the first 100 steps, the peak reached at the last of them.
    assert lr[0] == pytest.approx(1 / 100)
    assert lr[49] == pytest.approx(50 / 100)
    assert lr[99] == pytest.approx(1.0)
    # Cosine from the peak to the floor over the remaining 900 steps: half-way at step 550.
    assert lr[550] == pytest.approx(floor + (1 - floor) * 0.5)
    assert lr[-1] == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 899 / 900)))
    assert lr[-1] == pytest.approx(floor, abs=1e-4)
    after_warmup = lr[99:]
    assert all(a >= b for a, b in itertools.pairwise(after_warmup))
    assert min(lr[99:]) >= floor


def test_default_schedule_is_unchanged_by_the_floor_option() -> None:
    assert rates(300) == rates(300, final_lr_fraction=0.0)
    assert rates(300)[-1] < 1e-3


@pytest.mark.parametrize(("key", "value"), [("final_lr_fraction", 1.5), ("warmup_fraction", 1.0)])
def test_out_of_range_settings_are_refused(key: str, value: float) -> None:
    with pytest.raises(UserError, match=f"optim.scheduler.{key}={value} must be in"):
        rates(10, **{key: value})


def test_a_bad_schedule_setting_stops_train_before_the_run(run_train, tmp_path) -> None:
    proc = run_train("optim=adamw_cosine", "optim.scheduler.final_lr_fraction=-0.1", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: optim.scheduler.final_lr_fraction=-0.1 must be in [0, 1]" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert run_dirs(tmp_path / "outputs") == []


def test_torchs_schedules_get_the_same_check(run_train, tmp_path) -> None:
    # OneCycleLR refuses pct_start > 1 only when built, which used to happen once training ran.
    proc = run_train("optim=adamw_onecycle", "optim.scheduler.pct_start=1.5", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: optim.scheduler (torch.optim.lr_scheduler.OneCycleLR):")
    assert "pct_start" in lines[-1]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert run_dirs(tmp_path / "outputs") == []
