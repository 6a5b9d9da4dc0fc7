"""Every experiment config composes, builds its model and scores a batch of the shape it will see,
without training: a broken `experiment=` fails here in seconds, not an hour into a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from esc50_lightning.build import build_module
from esc50_lightning.time_budget import TimeBudget, check_time_budget

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_builds_and_scores_a_batch(name: str) -> None:
    cfg = _compose(f"experiment={name}")
    classes = [f"class{i}" for i in range(50)]
    module = build_module(cfg, classes).eval()
    budget = cfg.callbacks.get("time_budget")
    if budget:  # a budget needs an epoch cap and a schedule it can re-plan
        check_time_budget([instantiate(budget)], module.scheduler_factory, cfg.trainer.max_epochs)
    every = cfg.trainer.get("check_val_every_n_epoch") or 1
    assert cfg.trainer.max_epochs % every == 0, "the final epoch must be validated"
    dataset = cfg.data.dataset
    waveforms = torch.randn(2, int(dataset.sample_rate * dataset.clip_seconds))
    with torch.no_grad():
        logits = module(module.features(waveforms))
    assert logits.shape == (2, 50)
    assert torch.isfinite(logits).all()


def test_cpu_hour_is_cpu_bc_swa_trained_for_a_57_minute_budget() -> None:
    hour = _compose("experiment=cpu_hour")
    swa = _compose(
        "experiment=cpu_bc_swa",
        "callbacks.time_budget.minutes=57",
        "trainer.max_epochs=250",
        "trainer.check_val_every_n_epoch=5",
    )
    assert hour == swa
    budget = instantiate(hour.callbacks.time_budget)
    assert isinstance(budget, TimeBudget) and budget.active
