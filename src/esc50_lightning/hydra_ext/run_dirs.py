"""Run folders that two commands started in the same second cannot share.

Hydra names a run's folder after the time to the second (``conf/hydra/default.yaml``). Two
trainings started together, say one per core side by side, would otherwise write their logs,
checkpoints and metrics into one folder, each overwriting the other's. The ``unique_dir``
resolver claims the folder by creating it (an atomic ``mkdir``) and, if another process got
there first, takes the name with ``_2``, ``_3``... appended. It notes the folders above it that it
had to create, so that a run that fails before writing anything leaves none of them behind.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from omegaconf import OmegaConf

# Folders above a claimed run folder that this process created (``outputs/eval/runs``), deepest
# first: a run that fails before writing anything removes them with its own folder, if empty.
CREATED_PARENTS: list[Path] = []


@functools.cache  # Hydra reads the run dir several times in one process: one claim per process
def claim_dir(path: str) -> str:
    """Create ``path`` (or ``path_2``, ``path_3``... when it exists) and return the one created."""
    base = Path(path)
    missing = [p for p in (base.parent, *base.parent.parents) if not p.exists()]
    base.parent.mkdir(parents=True, exist_ok=True)
    CREATED_PARENTS.extend(missing)
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}_{n}")
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        return str(candidate)
    raise FileExistsError(f"{path}: no free run folder name")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("unique_dir"):
        OmegaConf.register_new_resolver("unique_dir", claim_dir, use_cache=True)
