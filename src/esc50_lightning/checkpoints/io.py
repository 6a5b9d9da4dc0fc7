"""Checkpoints that are either complete on disk or absent, even after ``kill -9`` or a power cut.

Lightning's ``TorchCheckpointIO`` serialises into memory, writes the bytes to a temporary file
made by ``tempfile.mkstemp()`` (the system temp folder, e.g. /tmp) and moves it into place with
``shutil.move``. When /tmp and the run folder are different filesystems (local /tmp, shared
outputs: the usual cluster layout) that move is a copy, so a job killed mid-copy leaves a
half-written ``last.ckpt`` behind, and nothing is fsync'ed. Here the temporary file lives next
to the target, is fsync'ed, and ``os.replace`` swaps it in atomically.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from esc50_lightning.atomic import atomic_file


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets one open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    with atomic_file(path) as handle:
        torch.save(obj, handle)
    _fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with same-directory write, fsync and atomic rename for local paths."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote URLs: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
