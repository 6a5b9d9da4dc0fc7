"""bf16 autocast on a CPU without bf16 instructions falls back to float32, with a warning."""

from __future__ import annotations

import logging

import pytest
from helpers import compose_config

import esc50_lightning.training.precision as precision_mod
from esc50_lightning.tasks.checks import check_train_config
from esc50_lightning.training.precision import cpu_has_native_bf16


def _cfg(*overrides: str):
    return compose_config("experiment=vgg8_mixup", "trainer.precision=bf16-mixed", "trainer=cpu", *overrides)


def test_cpu_flags_decide_native_bf16():
    assert cpu_has_native_bf16({"avx2", "fma"}) is False
    assert cpu_has_native_bf16({"avx2", "avx512f", "avx512_bf16"}) is True
    assert cpu_has_native_bf16({"amx_bf16"}) is True


@pytest.mark.parametrize(
    ("native", "expected"), [(False, "32-true"), (True, "bf16-mixed"), (None, "bf16-mixed")]
)
def test_bf16_recipe_runs_float32_without_bf16_instructions(monkeypatch, caplog, native, expected):
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: native)
    cfg = _cfg()
    assert cfg.trainer.precision == "bf16-mixed"
    with caplog.at_level(logging.WARNING, logger=precision_mod.log.name):
        check_train_config(cfg)
    assert cfg.trainer.precision == expected
    warned = [r.getMessage() for r in caplog.records if "no bf16 instructions" in r.getMessage()]
    assert bool(warned) == (native is False)
    if warned:
        assert "trainer.precision=bf16-mixed" in warned[0] and "32-true" in warned[0]


def test_float32_request_is_left_alone(monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: False)
    cfg = _cfg("trainer.precision=32-true")
    check_train_config(cfg)
    assert cfg.trainer.precision == "32-true"


@pytest.mark.parametrize(
    ("native", "precision", "compiled"),
    [(True, "bf16-mixed", False), (True, "32-true", True), (False, "bf16-mixed", True)],
)
def test_compiled_bf16_on_a_cpu_trains_uncompiled(monkeypatch, caplog, native, precision, compiled):
    """torch.compile with bf16 corrupted memory on a CPU (scripts/compile_bf16_check.py): a CPU
    run asking for both trains without compile and says why; float32 (also where bf16 was switched
    to it for want of bf16 instructions) keeps compile."""
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: native)
    cfg = _cfg(f"trainer.precision={precision}", "compile=true")
    with caplog.at_level(logging.WARNING, logger=precision_mod.log.name):
        check_train_config(cfg)
    assert cfg.compile is compiled
    warned = [r.getMessage() for r in caplog.records if "training without compile" in r.getMessage()]
    assert bool(warned) == (not compiled)
    if warned:
        assert warned[0].startswith("compile=true with trainer.precision=bf16-mixed: torch.compile with bf16")
        assert "scripts/compile_bf16_check.py" in warned[0]
