"""Resuming a run: which checkpoint ``ckpt_path`` means, and continuing in the original run folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from esc50_lightning.atomic import atomic_file
from esc50_lightning.checkpoints.record import read_checkpoint
from esc50_lightning.errors import UserError
from esc50_lightning.hydra_ext.run_dirs import read_run_config

log = logging.getLogger(__name__)

# What must match between a checkpoint's run and the command resuming it.
_RUN_IDENTITY = ("model.name", "data.dataset.name", "data.fold", "data.protocol")


def _identity(cfg: DictConfig) -> dict[str, Any]:
    return {key: OmegaConf.select(cfg, key, default=None) for key in _RUN_IDENTITY}


def resolve_resume(ckpt_path: str | None, log_dir: Path, cfg: DictConfig | None = None) -> Path | None:
    """The checkpoint to resume from: a path, or ``latest``.

    ``latest`` picks the newest ``last.ckpt`` under the outputs folder whose run was started with
    the same model, dataset, fold and protocol as this command, so re-running each command of a
    preempted sweep with ``ckpt_path=latest`` resumes that command's own run.
    """
    if not ckpt_path:
        return None
    if ckpt_path == "latest":
        candidates = sorted(log_dir.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if cfg is not None:
            want = _identity(cfg)
            candidates = [
                c
                for c in candidates
                if (rc := read_run_config(c.parent.parent)) is None or _identity(rc) == want
            ]
        if not candidates:
            what = "" if cfg is None else " for " + " ".join(f"{k}={v}" for k, v in _identity(cfg).items())
            raise UserError(f"ckpt_path=latest: no checkpoints/last.ckpt under {log_dir}{what}")
        read_checkpoint(candidates[-1])  # the same checks as a path given by hand
        return candidates[-1]
    path = Path(ckpt_path).expanduser()
    ckpt = read_checkpoint(path)  # clear error for a missing, damaged or foreign file
    if cfg is not None:
        saved = OmegaConf.create(ckpt["esc50"].get("config", {}))
        differ = [
            f"{k}={v} (checkpoint: {saved_v})"
            for k, v in _identity(cfg).items()
            if (saved_v := OmegaConf.select(saved, k, default=None)) is not None and saved_v != v
        ]
        if differ:
            raise UserError(
                f"{path}: cannot resume, this command differs from the run that saved it: "
                f"{', '.join(differ)}; resume with the original command plus ckpt_path=..."
            )
    return path


def continue_log_in(run_dir: Path, original: Path) -> None:
    """Point Hydra's log file from the throwaway run folder to the resumed run's log (appending)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir:
            handler.close()
            handler.baseFilename = str(original / Path(handler.baseFilename).name)
            handler.mode = "a"


def record_resume(run_dir: Path, original: Path) -> None:
    """Make the resumed run's ``.hydra`` record what it runs with now.

    The resuming command's overrides and composed config (Hydra wrote them to its own, throwaway
    ``run_dir``) replace ``overrides.yaml`` and ``config.yaml`` of the run folder training
    continues in, so that ``report`` labels the run by them (e.g. the raised
    ``trainer.max_epochs``). The first command's files are kept once, as
    ``overrides.original.yaml`` and ``config.original.yaml``.
    """
    source, target = run_dir / ".hydra", original / ".hydra"
    for name in ("overrides.yaml", "config.yaml"):
        new = source / name
        if not new.is_file() or not target.is_dir():
            continue
        current, first = target / name, target / name.replace(".yaml", ".original.yaml")
        if current.is_file() and not first.exists():
            os.replace(current, first)
        with atomic_file(current, "w") as handle:
            handle.write(new.read_text())
    log.info("resumed with overrides %s (first run's: .hydra/overrides.original.yaml)", _overrides(source))


def _overrides(hydra_dir: Path) -> list[str]:
    try:
        return [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    except Exception:
        return []
