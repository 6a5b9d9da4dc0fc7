"""The dataset download path, fed a local archive shaped like GitHub's ESC-50 zip (file:// URL).

Nothing is fetched from the network: the archive holds real ESC-50 clips (one per class) under an
``ESC-50-master/`` top folder, as ``https://github.com/karoldvl/ESC-50/archive/master.zip`` does.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from esc50_lightning.data import FoldedAudioDataModule
from esc50_lightning.data.download import ensure_dataset
from esc50_lightning.data.table import DatasetSpec
from esc50_lightning.errors import UserError


def make_archive(esc50_root: Path, dest: Path, drop_one_clip: bool = False) -> tuple[Path, pd.DataFrame]:
    """A zip of one clip of every class (classes spread over the five folds), laid out as GitHub's
    master.zip."""
    frame = pd.read_csv(esc50_root / "meta" / "esc50.csv")
    frame = frame[frame.fold == frame.target % 5 + 1].groupby("target").head(1).reset_index(drop=True)
    archive = dest / "master.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ESC-50-master/meta/esc50.csv", frame.to_csv(index=False))
        zf.writestr("ESC-50-master/README.md", "ESC-50\n")
        for name in frame.filename[1:] if drop_one_clip else frame.filename:
            zf.write(esc50_root / "audio" / name, f"ESC-50-master/audio/{name}")
    return archive, frame


def spec_for(root: Path, url: str) -> DatasetSpec:
    return DatasetSpec(name="esc50", root=str(root), download_url=url)


def test_download_lays_out_the_dataset_and_checks_the_checksum(esc50_root: Path, tmp_path: Path) -> None:
    archive, frame = make_archive(esc50_root, tmp_path)
    root = tmp_path / "data" / "ESC-50"  # data/ does not exist yet
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    ensure_dataset(spec_for(root, archive.as_uri()), sha256=digest)

    assert (root / "meta" / "esc50.csv").is_file()
    wavs = sorted(p.name for p in (root / "audio").glob("*.wav"))
    assert wavs == sorted(frame.filename)
    assert (root / "audio" / wavs[0]).read_bytes() == (esc50_root / "audio" / wavs[0]).read_bytes()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["ESC-50"], "download leftovers"

    # The datamodule reads what was downloaded, and a second call downloads nothing.
    offline = spec_for(root, (tmp_path / "missing.zip").as_uri())
    dm = FoldedAudioDataModule(dataset=offline, cache_features=False)
    assert len(dm.table) == len(frame) == 50


@pytest.mark.parametrize(
    ("problem", "message"),
    [("checksum", "checksum mismatch"), ("incomplete", "1 clips missing"), ("unreachable", "download from")],
)
def test_failed_download_says_why_and_leaves_nothing_behind(
    esc50_root: Path, tmp_path: Path, problem: str, message: str
) -> None:
    archive, _ = make_archive(esc50_root, tmp_path, drop_one_clip=problem == "incomplete")
    url = (tmp_path / "missing.zip").as_uri() if problem == "unreachable" else archive.as_uri()
    root = tmp_path / "data" / "sets" / "ESC-50"
    with pytest.raises(UserError, match=message):
        ensure_dataset(spec_for(root, url), sha256="0" * 64 if problem == "checksum" else None)
    assert not (tmp_path / "data").exists(), "a failed download left folders behind"


def test_failed_download_keeps_folders_that_were_there(esc50_root: Path, tmp_path: Path) -> None:
    (tmp_path / "data" / "mine.txt").parent.mkdir()
    (tmp_path / "data" / "mine.txt").write_text("keep")
    root = tmp_path / "data" / "ESC-50"
    with pytest.raises(UserError, match="download from"):
        ensure_dataset(spec_for(root, (tmp_path / "missing.zip").as_uri()))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["mine.txt"]


def test_a_non_empty_folder_without_the_csv_is_not_overwritten(tmp_path: Path) -> None:
    root = tmp_path / "ESC-50"
    (root / "audio").mkdir(parents=True)
    with pytest.raises(UserError, match=r"exists but has no meta/esc50\.csv"):
        ensure_dataset(spec_for(root, (tmp_path / "missing.zip").as_uri()))
    assert (root / "audio").is_dir()
