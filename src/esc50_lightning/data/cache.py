"""On-disk array cache: written atomically under a lock, validated when read, rebuilt when bad.

Each entry is ``<dir>/<name>.npy`` plus ``<name>.json`` (the commit marker, written last) that
records the key, shape, dtype and byte size. An entry whose marker is missing or disagrees with
the file is treated as absent and rebuilt; concurrent builders serialise on ``<name>.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from esc50_lightning.atomic import atomic_file


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as handle:
        handle.write(data)


class ArrayCache:
    """One cached array identified by ``key`` (a fingerprint of everything it depends on)."""

    def __init__(self, directory: Path, name: str, key: str):
        self.directory = Path(directory)
        self.name = name
        self.key = key
        self.array_path = self.directory / f"{name}.npy"
        self.marker_path = self.directory / f"{name}.json"
        self.lock_path = self.directory / f"{name}.lock"

    def load(self) -> np.ndarray | None:
        """The cached array, or None when absent, stale or damaged.

        Memory-mapped copy-on-write: pages load from the file on first use, and a write (none is
        made) would stay private to this process; torch takes such an array without copying it.
        """
        try:
            meta = json.loads(self.marker_path.read_text())
            if meta.get("key") != self.key:
                return None
            if self.array_path.stat().st_size != meta["bytes"]:
                return None
            array = np.load(self.array_path, mmap_mode="c", allow_pickle=False)
            if list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"]:
                return None
            return array
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
            return None

    def get_or_build(self, build: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        """Return ``(array, built)``; at most one process builds, the others wait and read."""
        array = self.load()
        if array is not None:
            return array, False
        with file_lock(self.lock_path):
            array = self.load()  # another process may have finished while we waited
            if array is not None:
                return array, False
            # Under the lock no one else is writing this entry: temp files are a killed writer's.
            for stale in self.directory.glob(f".{self.name}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
            self.write(np.ascontiguousarray(build()))
            array = self.load()
            assert array is not None, f"cache entry {self.array_path} unreadable right after writing"
            return array, True

    def write(self, array: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.marker_path.unlink()  # invalidate first: a crash below leaves no valid-looking entry
        with atomic_file(self.array_path, suffix=".npy.tmp") as handle:
            np.save(handle, array, allow_pickle=False)
        meta = {
            "key": self.key,
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "bytes": self.array_path.stat().st_size,
        }
        _atomic_write_bytes(self.marker_path, json.dumps(meta).encode())
