"""An exclusive lock on a file beside what it guards (a cache entry's ``.lock``): builders
serialise on it, ``cache prune`` takes it before removing the entry. Standard library only, so the
``cache`` command starts without torch."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created when absent); with ``wait=False`` raise
    ``BlockingIOError`` at once when another process holds it.

    ``cache prune`` removes an entry's lock file while holding it, so a process that was waiting
    may end up holding a lock on a file no longer at ``path``: it then locks the current one.
    """
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            try:
                if _same_file(handle.fileno(), path):
                    yield
                    return
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _same_file(fd: int, path: Path) -> bool:
    held = os.fstat(fd)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)
