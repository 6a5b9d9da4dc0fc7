"""Training for a wall-clock budget (callbacks.time_budget.minutes): the plan, a real run on
ESC-50 clips that stops early on a validated epoch with its schedule complete, and refusals."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_dirs

from esc50_lightning.training.time_budget import TimeBudget, epochs_that_fit


@pytest.mark.parametrize(
    ("done", "left", "epoch_s", "every", "cap", "expected"),
    [
        (1, 100.0, 10.0, 1, 50, 11),  # ten more fit
        (1, 100.0, 10.0, 5, 50, 10),  # ...rounded down to a validated epoch
        (7, 30.0, 10.0, 5, 50, 10),  # three fit: the period ends at 10 anyway
        (7, 5.0, 10.0, 5, 50, 10),  # none fit, but epoch 10 must still be scored
        (10, 5.0, 10.0, 5, 50, 10),  # none fit on a validated epoch: stop now
        (10, -20.0, 10.0, 5, 50, 10),  # past the deadline: stop now
        (1, 1e6, 10.0, 5, 50, 50),  # never beyond trainer.max_epochs
        (3, 1e6, 10.0, 5, 48, 48),  # a cap off the period (holdout protocol) is still the cap
    ],
)
def test_epochs_that_fit(done: int, left: float, epoch_s: float, every: int, cap: int, expected: int) -> None:
    assert epochs_that_fit(done, left, epoch_s, every, cap) == expected


def test_a_longer_plan_needs_an_epoch_to_spare() -> None:
    # 105 epochs planned; at epoch 51, 545 s fit 54.5 more epochs of 10 s: 105 again, no change.
    assert epochs_that_fit(51, 545.0, 10.0, 5, 150, planned=105) == 105
    # 595 s fit 59.5 more (110 by the clock), but 585 s (an epoch to spare) fit only 109: keep 105.
    assert epochs_that_fit(51, 595.0, 10.0, 5, 150, planned=105) == 105
    assert epochs_that_fit(51, 595.0, 10.0, 5, 150) == 110  # a first plan has nothing to keep
    # 610 s fit 110 even with an epoch to spare: grow.
    assert epochs_that_fit(51, 610.0, 10.0, 5, 150, planned=105) == 110
    # A shorter plan is taken when the plan overruns by more than an epoch: the deadline comes first.
    assert epochs_that_fit(51, 480.0, 10.0, 5, 150, planned=105) == 95
    # 535 s fit 53.5 more (104, so 100 by the clock), but 545 s (an epoch over) fit 105: keep 105,
    # rather than cut a schedule planned for 105 short.
    assert epochs_that_fit(51, 535.0, 10.0, 5, 150, planned=105) == 105
    assert epochs_that_fit(51, 535.0, 10.0, 5, 150) == 100


def test_a_resumed_run_counts_the_time_already_trained() -> None:
    budget = TimeBudget(minutes=1)
    budget.load_state_dict({"seconds_spent": 42.0, "recent": [3.0, 4.0]})
    assert budget.seconds_spent() == pytest.approx(42.0)
    assert budget.state_dict()["recent"] == [3.0, 4.0]


def test_a_budgeted_run_ends_early_on_a_scored_epoch_with_its_schedule_complete(run_train, tmp_path) -> None:
    cap = 60
    run_train(
        "experiment=vgg8_bc_hour",  # warmup_cosine with a floor: the last rate is easy to check
        f"trainer.max_epochs={cap}",
        "trainer.check_val_every_n_epoch=2",
        "+trainer.limit_train_batches=2",
        "data.batch_size=8",
        "callbacks.time_budget.minutes=0.1",
    )
    (run,) = run_dirs(tmp_path / "outputs")
    log = (run / "train.log").read_text()
    assert "time budget:" in log
    metrics = json.loads((run / "metrics.json").read_text())
    epochs = metrics["epochs"]
    assert 2 <= epochs < cap, epochs
    assert epochs % 2 == 0, "the run must end on a validated epoch"
    assert metrics["final"]["epoch"] == epochs  # ...and that epoch was scored
    assert f"epoch {epochs}/{epochs} |" in log

    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (schedule,) = last["lr_schedulers"]
    assert schedule["total_steps"] == 2 * epochs  # re-planned to the epochs trained
    assert schedule["last_epoch"] == schedule["total_steps"]
    peak = last["optimizer_states"][0]["param_groups"][0]["initial_lr"]
    final_lr = last["optimizer_states"][0]["param_groups"][0]["lr"]
    assert final_lr == pytest.approx(0.2 * peak, rel=1e-3)  # cosine ended at the floor, not cut off
    assert last["callbacks"]["TimeBudget"]["seconds_spent"] > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["optim=adamw_onecycle", "callbacks.time_budget.minutes=1"],
            "error: callbacks.time_budget cannot shorten OneCycleLR's schedule to the epochs that fit: "
            "use optim=adamw_cosine, or callbacks.time_budget.minutes=null",
        ),
        (
            ["callbacks.time_budget.minutes=-5"],
            "error: callbacks.time_budget.minutes=-5 must be a number of minutes above 0, or null",
        ),
    ],
)
def test_budget_mistakes_are_one_line_before_training(run_train, tmp_path, overrides, message) -> None:
    proc = run_train(*overrides, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in proc.stderr + proc.stdout
    assert run_dirs(tmp_path / "outputs") == []
