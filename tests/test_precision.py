"""Numeric precision: ``trainer.precision=auto`` (the default) resolved for the machine, logged and
recorded; ``32-true`` forcing float32; bf16 on a CPU without bf16 instructions falling back to
float32; compiled bf16 kept off CPUs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import compose_config

import esc50_lightning.training.precision as precision_mod
from esc50_lightning.tasks.checks import check_train_config
from esc50_lightning.training.precision import cpu_has_native_bf16, use_native_precision

RECIPES = ("vgg8_bc_hour", "vgg8_mixup", "long_schedule", "cnn14_finetune")


def _cfg(*overrides: str):
    return compose_config("experiment=vgg8_mixup", "trainer.precision=bf16-mixed", "trainer=cpu", *overrides)


def _cpu(monkeypatch, machine: str = "x86_64", avx512_bf16: bool = False, amx: bool = False) -> None:
    """A CPU as torch's own probes describe it (x86 only: elsewhere they are not asked)."""
    monkeypatch.setattr(precision_mod.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(precision_mod, "cpu_flags", set)  # not Linux: no /proc/cpuinfo to fall back on


def _auto_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("trainer.precision=auto")]


# ---- the auto rule ------------------------------------------------------------------------------
def test_every_trainer_and_recipe_leaves_the_precision_to_the_machine():
    """No recipe pins float32 any more; trainer=mps keeps it (MPS autocast is partial)."""
    assert compose_config().trainer.precision == "auto"
    for trainer in ("cpu", "gpu", "ddp"):
        assert compose_config(f"trainer={trainer}").trainer.precision == "auto", trainer
    for recipe in RECIPES:
        assert compose_config(f"experiment={recipe}").trainer.precision == "auto", recipe
    assert compose_config("trainer=mps").trainer.precision == "32-true"


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected", "why"),
    [
        (True, False, "bf16-mixed", "runs bf16 natively (avx512_bf16)"),
        (True, True, "bf16-mixed", "runs bf16 natively (AMX, avx512_bf16)"),
        (False, False, "32-true", "has no native bf16"),
    ],
)
def test_auto_on_an_x86_cpu_follows_its_bf16_instructions(
    monkeypatch, caplog, avx512_bf16, amx, expected, why
):
    _cpu(monkeypatch, avx512_bf16=avx512_bf16, amx=amx)
    cfg = compose_config("experiment=vgg8_bc_hour", "trainer=cpu")
    with caplog.at_level(logging.INFO, logger=precision_mod.log.name):
        check_train_config(cfg)
    assert cfg.trainer.precision == expected
    (line,) = _auto_lines(caplog)  # one line: what was chosen and why
    assert line.startswith(f"trainer.precision=auto chose {expected}: this CPU (") and why in line
    assert ("32-true forces float32" in line) == (expected == "bf16-mixed")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # a choice, not a fallback


def test_auto_on_a_cpu_it_cannot_read_is_float32(monkeypatch, caplog):
    """Not x86 (torch's probes say nothing there) and no CPU flags: bf16 might be emulated."""
    _cpu(monkeypatch, machine="aarch64", avx512_bf16=True)  # the probe is not asked off x86
    cfg = compose_config("trainer=cpu")
    with caplog.at_level(logging.INFO, logger=precision_mod.log.name):
        check_train_config(cfg)
    assert cfg.trainer.precision == "32-true"
    (line,) = _auto_lines(caplog)
    assert "is unknown" in line


def test_cpu_flags_are_the_fallback_when_torch_cannot_tell(monkeypatch):
    monkeypatch.setattr(precision_mod.platform, "machine", lambda: "x86_64")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch without the private probe
    monkeypatch.setattr(precision_mod, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert precision_mod.cpu_bf16_instructions() == ["avx512_bf16"]
    monkeypatch.setattr(precision_mod, "cpu_flags", lambda: {"avx2", "fma"})
    assert cpu_has_native_bf16() is False


def test_cpu_flags_decide_native_bf16():
    assert cpu_has_native_bf16({"avx2", "fma"}) is False
    assert cpu_has_native_bf16({"avx2", "avx512f", "avx512_bf16"}) is True
    assert cpu_has_native_bf16({"amx_bf16"}) is True
    assert cpu_has_native_bf16(set()) is None


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_on_a_gpu_is_bf16_where_it_has_it(monkeypatch, caplog, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    _cpu(monkeypatch)  # a CPU without bf16 changes nothing for a GPU run
    cfg = compose_config()  # trainer.accelerator=auto: the GPU
    with caplog.at_level(logging.INFO, logger=precision_mod.log.name):
        check_train_config(cfg)
    assert cfg.trainer.precision == expected
    (line,) = _auto_lines(caplog)
    assert "the GPU (NVIDIA H100)" in line


def test_auto_on_an_apple_gpu_is_float32(monkeypatch):
    _cpu(monkeypatch, avx512_bf16=True)
    cfg = compose_config("trainer.accelerator=mps")
    use_native_precision(cfg, on_cpu=False)
    assert cfg.trainer.precision == "32-true"


def test_float32_is_forced_on_a_bf16_cpu(monkeypatch, caplog):
    _cpu(monkeypatch, avx512_bf16=True)
    cfg = compose_config("experiment=vgg8_bc_hour", "trainer=cpu", "trainer.precision=32-true")
    with caplog.at_level(logging.INFO, logger=precision_mod.log.name):
        check_train_config(cfg)
    assert cfg.trainer.precision == "32-true" and not _auto_lines(caplog)


def test_resolving_twice_changes_nothing(monkeypatch, caplog):
    """A search resolves the config, then each trial's train() checks it again: one line, one value."""
    _cpu(monkeypatch, avx512_bf16=True)
    cfg = compose_config("trainer=cpu")
    with caplog.at_level(logging.INFO, logger=precision_mod.log.name):
        check_train_config(cfg)
        check_train_config(cfg)
    assert cfg.trainer.precision == "bf16-mixed" and len(_auto_lines(caplog)) == 1


# ---- an explicit bf16 request on a CPU without bf16 -----------------------------------------------
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


# ---- compiled bf16 on a CPU -----------------------------------------------------------------------
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


def test_compile_with_the_default_precision_on_a_bf16_cpu_is_compiled_float32(monkeypatch, caplog):
    """compile=true was asked for and the precision was not: auto picks float32, which compiles
    safely, rather than bf16, which would cost the compile."""
    _cpu(monkeypatch, avx512_bf16=True)
    cfg = compose_config("experiment=vgg8_bc_hour", "trainer=cpu", "compile=true")
    with caplog.at_level(logging.INFO, logger=precision_mod.log.name):
        check_train_config(cfg)
    assert (cfg.trainer.precision, cfg.compile) == ("32-true", True)
    (line,) = _auto_lines(caplog)
    assert line.startswith("trainer.precision=auto chose 32-true: compile=true on a CPU")
    assert "training without compile" not in caplog.text


# ---- a real run -----------------------------------------------------------------------------------
def test_a_tiny_run_logs_and_records_the_precision_it_resolved(holdout_run: Path) -> None:
    """``train.py debug=tiny`` at the default precision: the machine's choice is in the run's log
    (one line), its metrics.json and its checkpoints' run record, and the run trained with it."""
    expected = "bf16-mixed" if cpu_has_native_bf16() else "32-true"  # this machine, as train.py saw it
    log_lines = [
        ln for ln in (holdout_run / "train.log").read_text().splitlines() if "trainer.precision=auto" in ln
    ]
    assert len(log_lines) == 1 and f"trainer.precision=auto chose {expected}: this CPU (" in log_lines[0]
    assert json.loads((holdout_run / "metrics.json").read_text())["precision"] == expected
    for ckpt in (holdout_run / "checkpoints").glob("*.ckpt"):
        record = torch.load(ckpt, map_location="cpu", weights_only=True)["esc50"]
        assert record["precision"] == expected, ckpt.name
