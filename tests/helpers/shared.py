"""Things built once per test session for every pytest-xdist worker: decoded clips, datasets, runs."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder all workers of this session share.

    Under pytest-xdist every worker has its own base temp folder; their common parent is this
    session's alone (pytest numbers it), so it is shared by the workers and by nothing else.
    """
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(folder: Path, build: Callable[[Path], None]) -> Path:
    """Fill ``folder`` with ``build(folder)`` unless a worker of this session already did.

    The first worker to get here builds under a file lock while the others wait, then read what
    it made. A build that raises leaves no mark: the folder is emptied and the next caller tries
    again (and fails the same way, in its own tests).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    done = folder / ".built"
    with open(folder.with_name(f".{folder.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.is_file():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                build(folder)
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder
