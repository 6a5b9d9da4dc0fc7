"""Glue for command-line entry points: user mistakes become one line and a non-zero exit."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from omegaconf import DictConfig

from esc50_lightning.errors import UserError, show_tracebacks
from esc50_lightning.run_dirs import register_resolvers

T = TypeVar("T")

# The run-folder resolver the Hydra configs use: registered on import, before @hydra.main composes.
register_resolvers()


def guarded_task(fn: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run a Hydra task; on a ``UserError`` print it, remove the run folder it left empty, exit 2."""
    try:
        try:
            return fn(cfg)
        except InstantiationException as wrapped:  # hydra.utils.instantiate wraps a constructor's errors
            if isinstance(wrapped.__cause__, UserError):
                raise wrapped.__cause__ from None
            raise
    except UserError as err:
        if show_tracebacks():
            raise
        _remove_if_empty(cfg)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _remove_if_empty(cfg: DictConfig) -> None:
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
