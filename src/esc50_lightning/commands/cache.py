"""What the decode cache holds, and removing old entries.

``python -m esc50_lightning.cache list [--cache-dir DIR]`` prints every entry (dataset, kind,
key, size, last use) and the total; ``python -m esc50_lightning.cache prune (--older-than DAYS |
--all) [--dry-run] [--cache-dir DIR]`` removes entries not used for DAYS days, or all of them.

The cache folder is ``--cache-dir``, else ``$ESC50_CACHE``, else ``~/.cache/esc50-lightning`` (as in
the configs); it holds a folder per dataset, and in it each entry's ``<kind>-<key>.npy``, its
marker ``.json`` (touched whenever a run maps the entry: its mtime is the last use), its
``.lock`` and any temp files a killed build left. Other files are neither counted nor removed. An
entry another process is building (it holds the lock) is never removed; one that a running job
has already mapped can be: the job keeps reading its copy, later runs rebuild it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from esc50_lightning.commands.arguments import cache_parser
from esc50_lightning.downloads import default_cache_dir
from esc50_lightning.errors import UserError, run_guarded
from esc50_lightning.filelock import file_lock

ENTRY = re.compile(r"^(?P<stem>(?P<kind>waveforms|logmel)-(?P<key>[0-9a-f]{16}))\.(?:npy|json|lock)$")
TEMP = re.compile(r"^\.(?P<stem>(?P<kind>waveforms|logmel)-(?P<key>[0-9a-f]{16}))\..*\.tmp$")


@dataclass
class Entry:
    dataset: str
    kind: str
    key: str
    directory: Path
    files: list[Path] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return f"{self.kind}-{self.key}"

    @property
    def marker(self) -> Path:
        return self.directory / f"{self.stem}.json"

    @property
    def lock(self) -> Path:
        return self.directory / f"{self.stem}.lock"

    @property
    def complete(self) -> bool:
        return self.marker.is_file() and (self.directory / f"{self.stem}.npy").is_file()

    def stats(self) -> tuple[int, float]:
        """Bytes on disk and last use: the marker's mtime, else the newest file's (a killed build)."""
        size, newest = 0, 0.0
        for path in self.files:
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                size += st.st_size
                newest = max(newest, st.st_mtime)
        with contextlib.suppress(FileNotFoundError):
            return size, self.marker.stat().st_mtime
        return size, newest

    def building(self) -> bool:
        """Whether another process holds the entry's lock (is building it right now)."""
        try:
            with open(self.lock, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
        except FileNotFoundError:
            return False
        except BlockingIOError:
            return True
        return False

    def label(self) -> str:
        return f"{self.dataset}/{self.stem}"


def scan(root: Path) -> list[Entry]:
    """Every cache entry under ``root`` (one folder per dataset), in name order."""
    if not root.exists():
        raise UserError(f"{root}: no such cache folder (pass --cache-dir DIR or set ESC50_CACHE)")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (pass --cache-dir DIR or set ESC50_CACHE)")
    entries: dict[tuple[str, str], Entry] = {}
    folder = root
    try:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            for path in sorted(folder.iterdir()):
                match = ENTRY.match(path.name) or TEMP.match(path.name)
                if match is None or not path.is_file():
                    continue  # not ours: never counted, never removed
                entry = entries.setdefault(
                    (folder.name, match["stem"]), Entry(folder.name, match["kind"], match["key"], folder)
                )
                entry.files.append(path)
    except OSError as err:
        raise UserError(f"{folder}: cannot read the cache folder ({err.strerror or err})") from err
    return list(entries.values())


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else "-"


def list_entries(root: Path) -> str:
    entries = scan(root)
    if not entries:
        return f"no cache entries in {root}"
    rows = [("dataset", "kind", "key", "size", "last used", "status")]
    total = 0
    for entry in entries:
        size, last = entry.stats()
        total += size
        status = "building" if entry.building() else "ok" if entry.complete else "incomplete"
        rows.append((entry.dataset, entry.kind, entry.key, human(size), when(last), status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(f"total: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {human(total)} in {root}")
    return "\n".join(lines)


def remove(entry: Entry, cutoff: float | None) -> int | None:
    """Remove ``entry`` under its lock (marker first, so no reader sees it half gone); return the
    bytes freed, or None when it is being built or was used after ``cutoff`` meanwhile."""
    try:
        with file_lock(entry.lock, wait=False):
            entry.files = scan_entry(entry)
            size, last = entry.stats()
            if cutoff is not None and last >= cutoff:
                return None  # a run mapped it while we looked
            rest = [p for p in entry.files if p not in (entry.marker, entry.lock)]
            for path in [entry.marker, *rest, entry.lock]:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            return size
    except BlockingIOError:
        return None


def scan_entry(entry: Entry) -> list[Path]:
    """The entry's files as they are now."""
    found = []
    for path in entry.directory.iterdir():
        match = ENTRY.match(path.name) or TEMP.match(path.name)
        if match is not None and match["stem"] == entry.stem and path.is_file():
            found.append(path)
    return found


def prune(root: Path, older_than: float | None, everything: bool, dry_run: bool) -> str:
    if older_than is None and not everything:
        raise UserError("prune needs --older-than DAYS or --all")
    if older_than is not None and everything:
        raise UserError("--older-than and --all exclude each other")
    if older_than is not None and not (math.isfinite(older_than) and older_than >= 0):
        raise UserError(f"--older-than {older_than:g}: must be a number of days, 0 or more")
    cutoff = None if everything else time.time() - older_than * 86400
    lines, freed, removed, kept, kept_bytes = [], 0, 0, 0, 0
    for entry in scan(root):
        size, last = entry.stats()
        if cutoff is not None and last >= cutoff:
            kept, kept_bytes = kept + 1, kept_bytes + size
            continue
        if dry_run:
            if entry.building():
                lines.append(f"would skip {entry.label()}: another process is building it")
                kept, kept_bytes = kept + 1, kept_bytes + size
            else:
                lines.append(f"would remove {entry.label()} ({human(size)}, last used {when(last)})")
                freed, removed = freed + size, removed + 1
            continue
        try:
            gone = remove(entry, cutoff)
        except OSError as err:
            raise UserError(f"{entry.directory}: cannot remove {entry.stem} ({err.strerror or err})") from err
        if gone is None:
            lines.append(f"skipped {entry.label()}: in use by another process")
            kept, kept_bytes = kept + 1, kept_bytes + size
        else:
            lines.append(f"removed {entry.label()} ({human(gone)}, last used {when(last)})")
            freed, removed = freed + gone, removed + 1
    verb = "would free" if dry_run else "freed"
    lines.append(
        f"{verb} {human(freed)} ({removed} entr{'y' if removed == 1 else 'ies'}); "
        f"kept {kept} ({human(kept_bytes)}) in {root}"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    return cache_parser()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    root = (args.cache_dir or default_cache_dir()).expanduser()

    def run() -> str:
        if args.command == "list":
            return list_entries(root)
        return prune(root, args.older_than, args.all, args.dry_run)

    print(run_guarded(run))


if __name__ == "__main__":
    main()
