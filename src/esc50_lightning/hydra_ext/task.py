"""Hydra entry points (``train.py``, ``eval.py``): the run-folder resolver, and a task whose user
mistakes become one line, a non-zero exit and no run folder left behind."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig

from esc50_lightning.errors import run_guarded
from esc50_lightning.hydra_ext.run_dirs import register_resolvers

T = TypeVar("T")

# The run-folder resolver the Hydra configs use: registered on import, before @hydra.main composes.
register_resolvers()


def guarded_task(fn: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run a Hydra task; on a ``UserError`` remove the run folder it left empty, print it, exit 2."""
    return run_guarded(lambda: fn(cfg), on_error=_remove_if_empty)


def _remove_if_empty() -> None:
    """A run that failed before training holds only Hydra's bookkeeping: leave nothing half-written."""
    try:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        return
    if not run_dir.is_dir():
        return
    produced: list[Any] = [p for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts]
    if all(p.suffix == ".log" for p in produced):
        shutil.rmtree(run_dir, ignore_errors=True)
