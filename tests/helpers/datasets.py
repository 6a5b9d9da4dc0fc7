"""Small copies of real ESC-50 clips in a temp dir (for corrupting them and for quick runs), and a
folder snapshot that tells whether a command only read it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd


def make_subset(esc50_root: Path, dest: Path, classes: int = 2, per_fold: int = 1) -> pd.DataFrame:
    """Copy ``per_fold`` clips of each of the first ``classes`` classes in every fold into ``dest``.

    Files are real copies (never links), so corrupting them cannot touch the original dataset.
    Returns the trimmed metadata, also written to ``dest/meta/esc50.csv``.
    """
    frame = pd.read_csv(esc50_root / "meta" / "esc50.csv")
    frame = frame[frame.target < classes].groupby(["fold", "target"]).head(per_fold).reset_index(drop=True)
    (dest / "audio").mkdir(parents=True, exist_ok=True)
    (dest / "meta").mkdir(parents=True, exist_ok=True)
    for name in frame.filename:
        shutil.copyfile(esc50_root / "audio" / name, dest / "audio" / name)
    frame.to_csv(dest / "meta" / "esc50.csv", index=False)
    return frame


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``root``: equal before and after means it was only read."""
    return {
        str(Path(dirpath, name).relative_to(root)): (
            os.stat(Path(dirpath, name)).st_size,
            os.stat(Path(dirpath, name)).st_mtime_ns,
        )
        for dirpath, _, names in os.walk(root)
        for name in names
    }
