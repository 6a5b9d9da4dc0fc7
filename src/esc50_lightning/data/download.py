"""Fetch the official ESC-50 archive when the data is absent; verify it before it becomes visible."""

from __future__ import annotations

import logging
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from esc50_lightning.data.table import DatasetSpec
from esc50_lightning.downloads import fetch
from esc50_lightning.errors import UserError

log = logging.getLogger(__name__)

ESC50_URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"


def _layout_hint(spec: DatasetSpec) -> str:
    return (
        f"expected {spec.csv_path} and {spec.root_path / spec.audio_dir}/*.wav. Put the dataset there, "
        "or point to it with data.dataset.root=PATH"
        + (" or the ESC50_ROOT environment variable" if spec.name in ("esc50", "esc10") else "")
    )


def ensure_dataset(spec: DatasetSpec, sha256: str | None = None) -> None:
    """Make sure ``spec.root`` holds the dataset, downloading it when a URL is configured."""
    if spec.csv_path.is_file():
        return
    if not spec.download_url:
        raise UserError(f"dataset {spec.name!r} not found: {_layout_hint(spec)}")
    if spec.root_path.exists() and any(spec.root_path.iterdir()):
        raise UserError(f"{spec.root_path} exists but has no {spec.csv}: {_layout_hint(spec)}")
    try:
        download_and_extract(spec, sha256)
    except UserError:
        raise
    except Exception as err:
        raise UserError(
            f"dataset {spec.name!r} not found and download from {spec.download_url} failed "
            f"({err.__class__.__name__}: {err}); {_layout_hint(spec)}"
        ) from err


def download_and_extract(spec: DatasetSpec, sha256: str | None = None) -> None:
    """Download, check and unpack into a hidden folder beside ``spec.root``, then rename it into
    place: the dataset appears whole or not at all, and a failure leaves no folder behind."""
    root = spec.root_path
    created = [p for p in (root.parent, *root.parent.parents) if not p.exists()]
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(spec, sha256, root)
    except BaseException:
        for folder in created:  # deepest first; only the ones this call made, only if empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    log.info("Dataset ready at %s", root)


def _fetch(spec: DatasetSpec, sha256: str | None, root: Path) -> None:
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.download.") as tmp:
        archive = fetch(
            spec.download_url,
            Path(tmp) / "archive.zip",
            sha256=sha256,
            what=f"{spec.name} dataset archive",
            instead=f"download it elsewhere and unpack it: {_layout_hint(spec)}",
        )
        extracted = Path(tmp) / "extracted"
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(extracted)
        top = _find_root(extracted, spec.csv)
        _verify(spec, top)
        top.rename(root)  # same filesystem: an atomic move


def _find_root(extracted: Path, csv_rel: str) -> Path:
    for candidate in [extracted, *sorted(p for p in extracted.iterdir() if p.is_dir())]:
        if (candidate / csv_rel).is_file():
            return candidate
    raise UserError(f"downloaded archive has no {csv_rel}")


def _verify(spec: DatasetSpec, top: Path) -> None:
    frame = pd.read_csv(top / spec.csv)
    audio = top / spec.audio_dir
    missing = [f for f in frame[spec.file_column].astype(str) if not (audio / f).is_file()]
    if missing:
        raise UserError(f"downloaded archive is incomplete: {len(missing)} clips missing, e.g. {missing[0]}")
