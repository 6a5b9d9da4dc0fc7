"""AudioSet tagging out of the box: PANNs' published CNN14 checkpoint as a predictor of the 527
AudioSet labels (``python -m esc50_lightning.predict --ckpt Cnn14_mAP=0.431.pth FILE``).

The label names come from AudioSet's ``class_labels_indices.csv`` (columns ``index,mid,
display_name``), shipped as ``esc50_lightning/pretrained/audioset_labels.csv``.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path
from typing import Any

import torch

from esc50_lightning.checkpoints.record import load_weights_only
from esc50_lightning.data.audio import clip_samples
from esc50_lightning.errors import UserError
from esc50_lightning.features import FeatureExtractor, LogMel
from esc50_lightning.features.logmel import PANNS
from esc50_lightning.models.cnn14 import AUDIOSET_CLASSES, Cnn14
from esc50_lightning.training.classifier import AudioClassifier

LABELS = Path(__file__).resolve().parent / "pretrained" / "audioset_labels.csv"
LABELS_URL = "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/class_labels_indices.csv"
# PANNs trained on AudioSet's 10 s clips: the window a file is scored over.
CLIP_SECONDS = 10.0


def audioset_labels(path: str | Path | None = None) -> list[str]:
    """The 527 AudioSet label names in output order (from the shipped file unless ``path``)."""
    path = Path(path or LABELS)
    if not path.is_file():
        raise UserError(
            f"{path}: AudioSet's label names are not installed; save {LABELS_URL} there "
            "(columns index,mid,display_name)"
        )
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(rows[0]) != {"index", "mid", "display_name"} or len(rows) != AUDIOSET_CLASSES:
        raise UserError(
            f"{path}: not AudioSet's class_labels_indices.csv (want the header index,mid,display_name "
            f"and {AUDIOSET_CLASSES} rows, found {len(rows)})"
        )
    if [int(r["index"]) for r in rows] != list(range(AUDIOSET_CLASSES)):
        raise UserError(f"{path}: its index column is not 0..{AUDIOSET_CLASSES - 1} in order")
    return [r["display_name"] for r in rows]


def is_published_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a PANNs checkpoint (``{"model": state_dict}``, AudioSet head included)
    rather than one train.py wrote."""
    try:
        ckpt = load_weights_only(Path(path))
    except UserError:
        return False
    return (
        isinstance(ckpt, dict)
        and "esc50" not in ckpt
        and isinstance(ckpt.get("model"), dict)
        and "fc_audioset.weight" in ckpt["model"]
    )


def audioset_tagger(
    path: str | Path, labels: str | Path | None = None
) -> tuple[AudioClassifier, dict[str, Any]]:
    """The published checkpoint with its AudioSet head and PANNs' frontend, in eval mode, and a run
    record like ``load_classifier``'s (``multi_label``: scores are sigmoids, not a softmax)."""
    names = audioset_labels(labels)
    logmel = LogMel(
        sample_rate=PANNS["sample_rate"],
        n_fft=PANNS["n_fft"],
        hop_length=PANNS["hop_length"],
        n_mels=PANNS["n_mels"],
        f_min=PANNS["f_min"],
        f_max=PANNS["f_max"],
        top_db=None,
        mel_norm="slaney",
        mel_scale="slaney",
    )
    samples = clip_samples(PANNS["sample_rate"], CLIP_SECONDS)
    features = FeatureExtractor(logmel, samples, crop=None, normalize=False, eval_crop=None)
    net = Cnn14(num_classes=AUDIOSET_CLASSES, weights=str(path), keep_audioset_head=True)
    module = AudioClassifier(net, features, partial(torch.optim.Adam), class_names=names)
    info = {
        "model_name": "cnn14 (AudioSet, PANNs)",
        "multi_label": True,
        "data": {
            "dataset": "audioset",
            "sample_rate": PANNS["sample_rate"],
            "clip_seconds": CLIP_SECONDS,
            "class_names": names,
        },
    }
    return module.eval(), info
