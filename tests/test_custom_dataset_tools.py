"""predict, report and export on a model trained on a custom (UrbanSound8K-shaped) dataset.

Written against the command lines ``python -m esc50_lightning.predict --ckpt PATH --json OUT
FILES...``, ``python -m esc50_lightning.report DIR`` and ``python -m esc50_lightning.export --ckpt
PATH --out DIR``: class names, rate and clip length must come from the checkpoint and the runs,
never from ESC-50.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import run_command, run_dirs, us8k_overrides

from esc50_lightning.commands import export, report

CUSTOM = {"dog", "rooster", "rain", "sea_waves", "crackling_fire"}
CUSTOM |= {"crying_baby", "sneezing", "clock_tick", "helicopter", "chainsaw"}
ESC50_ONLY = ("airplane", "church_bells", "vacuum_cleaner", "door_wood_knock")


def classes_in(payload: Any) -> Iterator[str]:
    """Every value under a "class" key, anywhere in a JSON document."""
    if isinstance(payload, dict):
        for key, value in payload.items():
            if key == "class" and isinstance(value, str):
                yield value
            else:
                yield from classes_in(value)
    elif isinstance(payload, list):
        for item in payload:
            yield from classes_in(item)


def test_predict_report_and_export_use_the_custom_dataset(
    us8k: tuple[Path, pd.DataFrame],
    esc50_root: Path,
    trained_run,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    root, frame = us8k
    # The run test_custom_dataset trains and checks, copied: the report is written beside it.
    shutil.copytree(trained_run(*us8k_overrides(root), "model=cnn4").outputs, tmp_path / "outputs")
    (run,) = run_dirs(tmp_path / "outputs")
    ckpt = run / "checkpoints" / "last.ckpt"

    # A stereo 48 kHz clip, a 22.05 kHz clip and a 5 s ESC-50 clip (longer than the 4 s window).
    stereo = frame[(frame.channels == 2) & (frame.rate == 48000)].iloc[0]
    low = frame[(frame.channels == 1) & (frame.rate == 22050)].iloc[0]
    files = [
        root / "audio" / f"fold{stereo.fold}" / stereo.slice_file_name,
        root / "audio" / f"fold{low.fold}" / low.slice_file_name,
        esc50_root / "audio" / stereo.source,
    ]
    out = tmp_path / "predictions.json"
    proc = run_command(["-m", "esc50_lightning.predict", "--ckpt", ckpt, "--json", out, *files])
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(out.read_text())
    names = list(classes_in(payload))
    assert names and set(names) <= CUSTOM, f"predict used other class names: {set(names) - CUSTOM}"
    text = out.read_text()
    for f in files:
        assert f.name in text, f"{f.name} missing from the predictions"

    # report and export in this process (their command lines are tested on ESC-50 elsewhere)
    capsys.readouterr()
    report.main([str(tmp_path / "outputs")])
    stdout = capsys.readouterr().out
    assert "cnn4" in stdout
    written = "\n".join(p.read_text() for p in (tmp_path / "outputs").rglob("report/*") if p.suffix != ".png")
    everything = stdout + written
    assert any(name in everything for name in CUSTOM), "the report names none of the dataset's classes"
    assert not any(name in everything for name in ESC50_ONLY), "the report shows ESC-50 class names"

    exported = tmp_path / "export"
    export.main(["--ckpt", str(ckpt), "--out", str(exported)])
    (card,) = exported.glob("*.json")
    info = json.loads(card.read_text())
    assert set(info["class_names"]) == CUSTOM and len(info["class_names"]) == 10
    assert info["sample_rate"] == 22050 and info["input_samples"] == 4 * 22050
