"""Build an UrbanSound8K-shaped dataset out of real ESC-50 clips (for the custom-dataset tests).

Layout and columns are UrbanSound8K's: ``metadata/UrbanSound8K.csv`` with ``slice_file_name,
fsID, start, end, salience, fold, classID, class`` and clips in ``audio/fold1 ... audio/fold10``.
The clips are the ESC-10 classes' ESC-50 recordings, cut to lengths under 4 s, written at
22.05, 44.1 or 48 kHz, some as stereo: everything the loader must convert.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio.functional as AF

RATES = (22050, 44100, 48000)
FOLDS = 10


def make_us8k_like(esc50_root: Path, dest: Path, per_fold: int = 1) -> pd.DataFrame:
    """Write ``per_fold`` clips per class and fold (10 classes x 10 folds) under ``dest``.

    Returns the metadata frame plus bookkeeping columns that are not written to the CSV
    (``source``: the ESC-50 file, ``offset``, ``channels``, ``rate``, ``seconds``). Clips of one
    source recording (``fsID``) never span two folds.
    """
    meta = pd.read_csv(esc50_root / "meta" / "esc50.csv")
    meta = meta[meta.esc10].sort_values(["target", "filename"])
    classes = sorted(meta.target.unique())
    rows = []
    rng = np.random.default_rng(0)
    for class_id, target in enumerate(classes):
        clips = meta[meta.target == target].drop_duplicates("src_file")  # one clip per recording
        needed = FOLDS * per_fold
        assert len(clips) >= needed, f"class {target} has only {len(clips)} distinct recordings"
        for k, (_, src) in enumerate(clips.head(needed).iterrows()):
            fold = k % FOLDS + 1
            n = len(rows)
            rate = RATES[n % len(RATES)]
            channels = 2 if n % 4 == 1 else 1
            seconds = float(rng.uniform(0.6, 3.95))
            audio, esc_rate = sf.read(esc50_root / "audio" / src.filename, dtype="float32")
            start = int(rng.integers(0, len(audio) - int(seconds * esc_rate)))
            piece = audio[start : start + int(seconds * esc_rate)]
            if rate != esc_rate:
                piece = AF.resample(torch.from_numpy(piece), esc_rate, rate).numpy()
            data = np.stack([piece, 0.5 * piece], axis=1) if channels == 2 else piece
            fs_id = int(src.src_file) if str(src.src_file).isdigit() else 900000 + n
            name = f"{fs_id}-{class_id}-0-{k}.wav"
            folder = dest / "audio" / f"fold{fold}"
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(folder / name, data, rate, subtype="PCM_16")
            rows.append(
                {
                    "slice_file_name": name,
                    "fsID": fs_id,
                    "start": round(start / esc_rate, 3),
                    "end": round(start / esc_rate + len(piece) / rate, 3),
                    "salience": 1 + n % 2,
                    "fold": fold,
                    "classID": class_id,
                    "class": src.category,
                    "source": src.filename,
                    "offset": start,  # first sample taken from the source
                    "channels": channels,
                    "rate": rate,
                    "seconds": len(piece) / rate,
                }
            )
    frame = pd.DataFrame(rows)
    (dest / "metadata").mkdir(parents=True, exist_ok=True)
    columns = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
    frame[columns].to_csv(dest / "metadata" / "UrbanSound8K.csv", index=False)
    return frame


def us8k_overrides(root: Path) -> list[str]:
    """``train.py`` overrides for the dataset written by :func:`make_us8k_like`."""
    return ["data=urbansound8k", f"data.dataset.root={root}", "data.dataset.name=us8k_like_test"]
