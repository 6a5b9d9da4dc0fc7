"""Datasets beyond ESC-50: data=esc10, data=folded_csv and an UrbanSound8K-shaped dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from helpers import compose_config, us8k_overrides
from hydra.utils import instantiate
from omegaconf import DictConfig

from esc50_lightning.data import DatasetSpec, FoldedAudioDataModule, read_table
from esc50_lightning.errors import DataError
from esc50_lightning.factory import build_logmel

ESC10_NAMES = [  # ESC-50 target order: 0, 1, 10, 11, 12, 20, 21, 38, 40, 41
    "dog",
    "rooster",
    "rain",
    "sea_waves",
    "crackling_fire",
    "crying_baby",
    "sneezing",
    "clock_tick",
    "helicopter",
    "chainsaw",
]


def datamodule(cfg: DictConfig, cache_dir: Path, **kwargs) -> FoldedAudioDataModule:
    return instantiate(cfg.data, frontend=build_logmel(cfg), cache_dir=str(cache_dir), **kwargs)


def test_esc10_counts_and_names(esc50_root: Path, tmp_path: Path) -> None:
    cfg = compose_config("data=esc10", f"data.dataset.root={esc50_root}")
    table = datamodule(cfg, tmp_path).table  # reads and checks the CSV, decodes nothing
    assert len(table) == 400
    assert np.bincount(table.labels).tolist() == [40] * 10
    assert np.bincount(table.folds)[1:].tolist() == [80] * 5
    assert table.class_names == ESC10_NAMES
    assert table.fold_ids == [1, 2, 3, 4, 5]
    meta = pd.read_csv(esc50_root / "meta" / "esc50.csv").set_index("filename")
    assert [meta.category[f] for f in table.files] == [ESC10_NAMES[k] for k in table.labels]


def test_folded_csv_with_esc50_columns_is_esc50(esc50_root: Path, tmp_path: Path) -> None:
    esc50 = datamodule(compose_config("data=esc50", f"data.dataset.root={esc50_root}"), tmp_path).table
    generic = datamodule(
        compose_config(
            "data=folded_csv",
            f"data.dataset.root={esc50_root}",
            "data.dataset.csv=meta/esc50.csv",
            "data.dataset.audio_dir=audio",
            "data.dataset.class_column=category",
        ),
        tmp_path,
    ).table
    assert generic.files == esc50.files and generic.paths == esc50.paths
    assert np.array_equal(generic.folds, esc50.folds) and np.array_equal(generic.labels, esc50.labels)
    assert generic.class_names == esc50.class_names and len(generic.class_names) == 50


def test_us8k_like_clips_become_mono_4s_at_the_configured_rate(
    us8k: tuple[Path, pd.DataFrame], esc50_root: Path, tmp_path: Path
) -> None:
    root, frame = us8k
    cfg = compose_config(*us8k_overrides(root))
    dm = datamodule(cfg, tmp_path, cache_features=False)
    dm.prepare_data()
    dm.setup()
    table = dm.table
    assert table.fold_ids == list(range(1, 11)) and len(table) == 100
    assert dm.splits == {"train": [f for f in range(2, 11)], "val": [1], "test": [1]}
    assert dm.class_names == ESC10_NAMES  # names come from the `class` column
    assert len(dm.sets["train"]) == 90 and len(dm.sets["val"]) == 10
    waves = dm.store.waveforms(table)
    assert waves.shape == (100, 4 * 22050)

    # A stereo 48 kHz clip: the cache holds the channel mean (0.75 x the source) at 22.05 kHz,
    # zero-padded to 4 s. Compare with the ESC-50 source resampled directly.
    row = frame[(frame.channels == 2) & (frame.rate == 48000)].iloc[0]
    i = table.files.index(row.slice_file_name)
    cached = waves[i].astype(np.float32) / 32767
    source, rate = sf.read(esc50_root / "audio" / row.source, dtype="float32")
    start = int(row.offset)
    expected = AF.resample(torch.from_numpy(source[start : start + int(row.seconds * rate)]), rate, 22050)
    n = min(len(expected), int(row.seconds * 22050)) - 64  # resampler edges differ slightly
    got, want = cached[32:n], 0.75 * expected.numpy()[32:n]
    assert np.corrcoef(got, want)[0, 1] > 0.99
    assert abs(np.std(got) / np.std(want) - 1) < 0.05
    assert not cached[int(row.seconds * 22050) + 64 :].any(), "short clip not zero-padded"


def test_data_checks_name_us8k_columns(us8k: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    root, _ = us8k
    cfg = compose_config(*us8k_overrides(root))
    csv = pd.read_csv(root / "metadata" / "UrbanSound8K.csv")

    def problems(frame: pd.DataFrame) -> str:
        frame.to_csv(tmp_path / "meta.csv", index=False)
        spec = DatasetSpec(**{**cfg.data.dataset, "root": str(root), "csv": str(tmp_path / "meta.csv")})
        with pytest.raises(DataError) as err:
            read_table(spec)
        return str(err.value)

    assert "'classID'" in problems(csv.drop(columns=["classID"]))
    assert "'slice_file_name'" in problems(csv.rename(columns={"slice_file_name": "file"}))
    bad_fold = csv.copy()
    bad_fold.loc[3, "fold"] = 11
    assert "meta.csv:5: fold 11 outside 1-10" in problems(bad_fold)
    bad_label = csv.copy()
    bad_label.loc[7, "classID"] = 10
    message = problems(bad_label)
    assert "meta.csv:9:" in message and "10 outside 0-9" in message


def test_folded_csv_needs_root_and_csv(run_train) -> None:
    proc = run_train("data=folded_csv", check=False)
    assert proc.returncode == 2
    assert "data.dataset.root and data.dataset.csv must be set" in proc.stderr


def test_train_one_epoch_on_us8k_like(us8k: tuple[Path, pd.DataFrame], trained_run) -> None:
    root, frame = us8k
    run = trained_run(*us8k_overrides(root), "model=cnn4").run  # shared with test_custom_dataset_tools
    assert "us8k_like_test_cnn4_fold1" in run.name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == "us8k_like_test"
    assert metrics["splits"]["train"] == list(range(2, 11)) and metrics["splits"]["val"] == [1]
    assert 0.0 <= metrics["final"]["acc"] <= 1.0
    predictions = pd.read_csv(run / "predictions_val.csv")
    assert len(predictions) == 10 and set(predictions.target_name) == set(ESC10_NAMES)
    assert set(predictions.file) == set(frame[frame.fold == 1].slice_file_name)
    log = (run / "train.log").read_text()
    assert "resampled to 22050 Hz" in log and "averaged to mono" in log and "padded/trimmed to 4 s" in log
    (ckpt,) = (run / "checkpoints").glob("last.ckpt")
    info = torch.load(ckpt, map_location="cpu", weights_only=False)["esc50"]
    assert info["data"]["class_names"] == ESC10_NAMES
    assert info["data"]["dataset"] == "us8k_like_test" and info["data"]["clip_seconds"] == 4.0
    assert info["features"]["crop"] == [100, 0.89]
