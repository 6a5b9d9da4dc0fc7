"""Resuming a run: which checkpoint ``ckpt_path`` means, and continuing in the original run folder.

The run folder is where the checkpoint file lies, never a path the file holds; the checkpoint
callbacks' stored paths are replaced by this folder's own files (``training/display.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from esc50_lightning.atomic import atomic_file
from esc50_lightning.checkpoints.record import read_checkpoint
from esc50_lightning.errors import UserError
from esc50_lightning.tasks.results import read_run_config

log = logging.getLogger(__name__)

# What must match between a checkpoint's run and the command resuming it.
_RUN_IDENTITY = ("model.name", "data.dataset.name", "data.fold", "data.protocol")


def _identity(cfg: DictConfig) -> dict[str, Any]:
    return {key: OmegaConf.select(cfg, key, default=None) for key in _RUN_IDENTITY}


def _recorded_identity(record: dict[str, Any]) -> dict[str, Any]:
    """The same keys as a checkpoint's run record holds them."""
    data = record["data"]
    values = (record.get("model_name"), data.get("dataset"), data.get("fold"), data.get("protocol"))
    return dict(zip(_RUN_IDENTITY, values, strict=True))


def _local_rank() -> int:
    """This process's rank on its node: set by Lightning's launcher, torchrun or SLURM; else 0."""
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def resume_in_place(cfg: DictConfig) -> tuple[str | None, Path]:
    """The checkpoint ``ckpt_path`` resumes from (None: a new run) and the folder the run writes
    to: a resumed run continues in the run folder its checkpoint lies in, so that checkpoints and
    TensorBoard curves carry on (``cfg.paths.output_dir`` is pointed there)."""
    run_dir = Path(cfg.paths.output_dir)
    resume = resolve_resume(cfg.get("ckpt_path"), Path(cfg.paths.log_dir), cfg)
    if resume is None:
        return None, run_dir
    original = resume.parent.parent
    if resume.parent.name == "checkpoints" and (original / ".hydra").is_dir():
        with open_dict(cfg):
            cfg.paths.output_dir = str(original)
        if run_dir != original:
            continue_log_in(run_dir, original)
            if _local_rank() == 0:
                record_resume(run_dir, original)
            if run_dir.is_dir() and not any(run_dir.glob("checkpoints/*")):
                shutil.rmtree(run_dir, ignore_errors=True)
        run_dir = original
    log.info("Resuming from %s in %s", resume, run_dir)
    return str(resume), run_dir


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
    path = Path(ckpt_path).expanduser().absolute()
    ckpt = read_checkpoint(path)  # clear error for a missing, damaged or foreign file
    if cfg is not None:
        saved = _recorded_identity(ckpt["esc50"])
        differ = [
            f"{k}={v} (checkpoint: {saved[k]})"
            for k, v in _identity(cfg).items()
            if saved[k] is not None and saved[k] != v
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
