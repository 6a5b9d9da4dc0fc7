"""The cache under odd spellings, damage, kills and bad audio; the `cache` command that lists and
prunes it. Every test works on a few real ESC-50 clips (``minids.make_subset``: 10 clips)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from minids import make_subset

from esc50_lightning.data import FoldedAudioDataModule
from esc50_lightning.data.table import DatasetSpec


def _dm(root: Path | str, cache: Path, features: bool = False) -> FoldedAudioDataModule:
    from esc50_lightning.features import LogMel

    spec = DatasetSpec(name="esc50", root=str(root), folds=[1, 2, 3, 4, 5], num_classes=50)
    frontend = LogMel() if features else None
    return FoldedAudioDataModule(spec, cache_dir=str(cache), cache_features=features, frontend=frontend)


def _waves(root: Path | str, cache: Path) -> np.ndarray:
    dm = _dm(root, cache)
    return np.array(dm.store.waveforms(dm.table))


def _count(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_one_entry_for_relative_absolute_and_symlinked_spellings(
    esc50_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path = tmp_path.resolve()
    root, cache = tmp_path / "data" / "esc50", tmp_path / "cache"
    make_subset(esc50_root, root)
    (tmp_path / "link").symlink_to(tmp_path / "data", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)

    spellings = [str(root), "data/esc50", "link/esc50", "./data/../link/esc50"]
    arrays = [_waves(spelling, cache) for spelling in spellings]
    assert _count(caplog, "decoded clips in") == 1, "decoded once, then read by every spelling"
    assert all(np.array_equal(a, arrays[0]) for a in arrays[1:])
    (npy,) = (cache / "esc50").glob("*.npy")

    # The key of an absolute path without symlinks is the one earlier versions computed, so the
    # caches users already have stay valid.
    dm = _dm(root, cache)
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in dm.table.paths]
    payload = json.dumps({"files": stats, "rate": 44100, "samples": 220500, "v": 1})
    assert npy.stem == f"waveforms-{hashlib.sha1(payload.encode()).hexdigest()[:16]}"
