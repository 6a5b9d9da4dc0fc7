"""Read a checkpoint the project wrote and rebuild the trained model it holds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from esc50_lightning.errors import UserError
from esc50_lightning.factory import build_module
from esc50_lightning.training.classifier import AudioClassifier

# Modules that moved in version 1.0: the configs recorded in older checkpoints name the old places.
MOVED_MODULES = {
    "esc50_lightning.schedules": "esc50_lightning.training.schedules",
    "esc50_lightning.time_budget": "esc50_lightning.training.time_budget",
    "esc50_lightning.classifier": "esc50_lightning.training.classifier",
    "esc50_lightning.metrics": "esc50_lightning.training.metrics",
    "esc50_lightning.sweep": "esc50_lightning.hydra_ext.sweep",
    "esc50_lightning.run_dirs": "esc50_lightning.hydra_ext.run_dirs",
    "esc50_lightning.checkpoint_io": "esc50_lightning.checkpoints.io",
    "esc50_lightning.features.frontend": "esc50_lightning.features",
    "esc50_lightning.data.cache": "esc50_lightning.data.store",
}

# Lightning callbacks that 1.0 replaced with subclasses counting epochs from 1 for users.
REPLACED_CLASSES = {
    f"lightning.pytorch.callbacks.{old}": f"esc50_lightning.training.display.{new}"
    for old, new in (
        ("ModelCheckpoint", "ModelCheckpoint"),
        ("RichProgressBar", "ProgressBar"),
        ("RichModelSummary", "ModelSummary"),
    )
}

# The run record's key saying its history counts epochs from 1; records without it count from 0.
EPOCHS_FROM = "epochs_from"


def moved_target(target: str) -> str:
    """A ``_target_`` as it reads after the move (``esc50_lightning.schedules.warmup_cosine`` →
    ``esc50_lightning.training.schedules.warmup_cosine``); other targets are returned unchanged."""
    if target in REPLACED_CLASSES:
        return REPLACED_CLASSES[target]
    module, _, name = target.rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else target


def count_epochs_from_1(record: dict[str, Any]) -> dict[str, Any]:
    """A run record (``ckpt["esc50"]``) with its history's epochs counted from 1, as 1.0 writes
    them; records written before counted from 0, as Lightning does. Changes ``record`` in place."""
    if record.get(EPOCHS_FROM) != 1:
        record["history"] = [{**h, "epoch": h["epoch"] + 1} for h in record.get("history") or []]
        record[EPOCHS_FROM] = 1
    return record


def _update_targets(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: moved_target(v) if k == "_target_" and isinstance(v, str) else _update_targets(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_update_targets(v) for v in node]
    return node


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(f"{path}: not a readable checkpoint ({err.__class__.__name__})") from err
    if not isinstance(ckpt, dict) or "esc50" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not an esc50-lightning checkpoint (no 'esc50' run record)")
    if isinstance(ckpt["esc50"].get("config"), dict):
        ckpt["esc50"]["config"] = _update_targets(ckpt["esc50"]["config"])
    count_epochs_from_1(ckpt["esc50"])
    return ckpt


def plain_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State-dict keys as an uncompiled module has them (torch.compile inserts ``._orig_mod.``)."""
    return {k.replace("._orig_mod.", "."): v for k, v in state.items()}


def offline_net(net: dict[str, Any]) -> dict[str, Any]:
    """A copy of a ``model.net`` config that downloads nothing: weights come from the checkpoint."""
    net = copy.deepcopy(net)
    if "pretrained" in net:
        net["pretrained"] = False
    return net


def load_classifier(path: str | Path) -> tuple[AudioClassifier, dict[str, Any]]:
    """Rebuild the module a checkpoint was trained with, weights loaded, in eval mode."""
    ckpt = read_checkpoint(path)
    info = ckpt["esc50"]
    config = copy.deepcopy(info["config"])
    config["model"]["net"] = offline_net(config["model"]["net"])
    config["compile"] = False
    module = build_module(OmegaConf.create(config), list(info["data"]["class_names"]))
    module.load_state_dict(plain_state_dict(ckpt["state_dict"]))
    module.run_info = info
    module.history = list(info.get("history", []))
    return module.eval(), info
