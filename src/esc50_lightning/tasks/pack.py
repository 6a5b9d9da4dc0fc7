"""Pack trained checkpoints for others: slim copies (weights and run record, float16) and ensembles.

Every source is read and verified (``checkpoints/record.py``) and its model rebuilt with its
weights (``factory.py``) before anything is written; what is written holds only what was verified.
``python -m esc50_lightning.pack`` (``commands/pack.py``) and a sweep's ensemble
(``hydra_ext/sweep.py``) use these.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from esc50_lightning.checkpoints.io import atomic_torch_save
from esc50_lightning.checkpoints.record import RECORD_FIELDS, plain_state_dict, read_checkpoint
from esc50_lightning.errors import UserError
from esc50_lightning.factory import KEEP_EVAL_CROP, classifier_from_record
from esc50_lightning.features.extractor import CropSize


def slim_checkpoint(
    src: str | Path,
    dst: str | Path,
    half: bool = True,
    eval_crop: list[CropSize] | str | None = KEEP_EVAL_CROP,
) -> Path:
    """Weights and run record only (no optimiser or callback state): what one ships to users.

    The source is verified and its model rebuilt with its weights before anything is written, and
    the copy holds only the record's known fields and the weights that loaded. ``half`` stores
    floating-point weights as float16 (half the size); loading casts them back to float32.
    ``eval_crop`` other than ``KEEP_EVAL_CROP`` sets the centred cut the result scores
    (``features.eval_crop``); the weights do not depend on it, and the run record notes it.
    """
    ckpt = read_checkpoint(src)
    module = classifier_from_record(ckpt, str(src))
    record = verified_record(ckpt["esc50"])
    if eval_crop != KEEP_EVAL_CROP:
        previous = module.features.eval_shape
        module.features.set_eval_crop(eval_crop)  # refuses a cut that does not fit
        record["features"]["eval_crop"] = eval_crop
        record["eval_crop_set_by_pack"] = {"from": list(previous), "to": eval_crop}
    epoch = ckpt.get("epoch")
    slim = {
        "state_dict": module.state_dict(),
        "esc50": record,
        "epoch": epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
    }
    return _save_slim(slim, dst, half)


def verified_record(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of a verified run record with only the fields this project writes."""
    return copy.deepcopy({k: record[k] for k in sorted(RECORD_FIELDS) if k in record})


# What members of one ensemble must share: the same input features from the same clips, and
# the same held-out fold (an ensemble with one member that trained on it is not an evaluation).
_SHARED_DATA = ("dataset", "fold", "protocol", "splits", "class_names", "sample_rate", "clip_seconds")


def ensemble_checkpoint(srcs: list[str | Path], dst: str | Path, half: bool = True) -> Path:
    """One checkpoint that averages the class probabilities of several trained checkpoints.

    The members must have been trained on the same folds with the same features (they share one
    frontend); each is verified and rebuilt with its weights, and so is the ensemble, before it is
    written. eval.py and predict load the result like any other checkpoint.
    """
    if len(srcs) < 2:
        raise UserError(f"an ensemble needs at least two checkpoints, got {len(srcs)}")
    ckpts = [read_checkpoint(src) for src in srcs]
    for src, ckpt in zip(srcs, ckpts, strict=True):
        if ckpt["esc50"]["net"]["class"] == "ensemble":
            raise UserError(f"{src}: is an ensemble already; give its members instead")
        classifier_from_record(ckpt, str(src))  # builds, and its weights fit
    first = ckpts[0]["esc50"]
    for src, ckpt in zip(srcs[1:], ckpts[1:], strict=True):
        info = ckpt["esc50"]
        for key in _SHARED_DATA:
            if info["data"].get(key) != first["data"].get(key):
                raise UserError(
                    f"{src}: its data {key} differs from {srcs[0]}'s; "
                    "ensemble members must share folds and classes"
                )
        if info["features"] != first["features"]:
            raise UserError(f"{src}: its features differ from {srcs[0]}'s; members must share one frontend")

    names = [str(ckpt["esc50"].get("model_name", "?")) for ckpt in ckpts]
    record = verified_record(first)
    record["model_name"] = f"ensemble of {len(ckpts)} ({', '.join(names)})"
    record["net"] = {"class": "ensemble", "members": [copy.deepcopy(c["esc50"]["net"]) for c in ckpts]}
    record["history"] = []
    record["members"] = [
        {
            "source": Path(src).name,  # the file's name only: no folder of this machine
            "model_name": ckpt["esc50"].get("model_name"),
            "seed": ckpt["esc50"].get("seed"),
            "final_epoch": (ckpt["esc50"].get("history") or [None])[-1],
        }
        for src, ckpt in zip(srcs, ckpts, strict=True)
    ]
    state: dict[str, torch.Tensor] = {}
    for i, ckpt in enumerate(ckpts):
        for key, value in plain_state_dict(ckpt["state_dict"]).items():
            if key.startswith("net."):
                state[f"net.members.{i}.{key.removeprefix('net.')}"] = value
            elif i == 0:  # the shared frontend's buffers
                state[key] = value
    module = classifier_from_record({"state_dict": state, "esc50": record}, str(dst))
    return _save_slim({"state_dict": module.state_dict(), "esc50": record, "epoch": None}, dst, half)


def _save_slim(ckpt: dict[str, Any], dst: str | Path, half: bool) -> Path:
    if half:
        state = ckpt["state_dict"]
        ckpt["state_dict"] = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    dst = Path(dst)
    atomic_torch_save(ckpt, dst)
    return dst
