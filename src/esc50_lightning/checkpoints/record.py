"""Read a checkpoint the project wrote and rebuild the trained model it holds."""

from __future__ import annotations

import copy
import pickle
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


# Where the config inside a checkpoint may point ``hydra.utils.instantiate``: this package's classes,
# torch's optimisers and schedules, Lightning's trainer, callbacks and loggers. A config from someone
# else's file naming anything else (``os.system``, ``subprocess.run``...) would run code when the
# model is rebuilt.
ALLOWED_TARGETS = ("esc50_lightning.", "torch.optim.", "lightning.pytorch.")


def _refusal(err: Exception) -> str:
    """The line of torch's weights-only refusal that names the object, e.g. ``GLOBAL posix.system``."""
    for line in str(err).splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip().rstrip(".")
    return err.__class__.__name__


def _targets(node: Any, key: str = "") -> list[tuple[str, str]]:
    """Every ``(config key, _target_)`` in a config tree."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            where = f"{key}.{k}" if key else str(k)
            if k == "_target_":
                found.append((where, v))
            else:
                found += _targets(v, where)
    elif isinstance(node, list):
        for n, v in enumerate(node):
            found += _targets(v, f"{key}[{n}]")
    return found


def _check_record(path: Path, ckpt: Any) -> None:
    """Refuse a file whose contents are not what this project writes, naming what is wrong."""

    def bad(what: str) -> UserError:
        return UserError(f"{path}: not a usable esc50-lightning checkpoint ({what})")

    if not isinstance(ckpt, dict) or "esc50" not in ckpt or "state_dict" not in ckpt:
        raise bad("no 'esc50' run record and 'state_dict'")
    state, info = ckpt["state_dict"], ckpt["esc50"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise bad("'state_dict' is not a mapping of names to tensors")
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise bad("the run record holds no config")
    net = (
        (info["config"].get("model") or {}).get("net")
        if isinstance(info["config"].get("model"), dict)
        else None
    )
    if not isinstance(net, dict) or not isinstance(net.get("_target_"), str):
        raise bad("the run record's config names no model.net._target_")
    data = info.get("data")
    names = data.get("class_names") if isinstance(data, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise bad("the run record has no list of class names")
    for key in ("sample_rate", "clip_seconds"):
        if not isinstance(data.get(key), int | float) or isinstance(data.get(key), bool) or data[key] <= 0:
            raise bad(f"data.{key}={data.get(key)!r} in the run record is not a positive number")
    history = info.get("history", [])
    if not isinstance(history, list) or not all(
        isinstance(h, dict) and isinstance(h.get("epoch"), int) for h in history
    ):
        raise bad("the run record's history is not a list of epochs")
    for key, target in _targets(info["config"]):
        if not isinstance(target, str) or not moved_target(target).startswith(ALLOWED_TARGETS):
            raise bad(f"config {key}={target!r} is not a class of esc50-lightning, torch.optim or Lightning")


UNREADABLE = "not a readable checkpoint (not a file torch.save wrote, or damaged)"


def checkpoint_path(path: str | Path) -> Path:
    """``path`` as a checkpoint file that exists, or a ``UserError`` saying what it is instead."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely: tensors and plain values only (``weights_only``), so a crafted file
    cannot run code; its run record is checked before anything is built from it."""
    path = checkpoint_path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):  # not a pickle at all (e.g. an audio file)
            raise UserError(f"{path}: {UNREADABLE}") from err
        raise UserError(
            f"{path}: refused, it holds Python objects that could run code when loaded ({_refusal(err)}); "
            "esc50-lightning checkpoints hold only tensors and plain values"
        ) from err
    except Exception as err:  # truncated, or not a file torch.save wrote: which error depends on the bytes
        raise UserError(f"{path}: {UNREADABLE}") from err
    _check_record(path, ckpt)
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
    if net.get("weights"):  # model=cnn14: the published file was read when training began
        net["weights"] = None
    return net


def _first_line(err: BaseException) -> str:
    cause = err.__cause__ or err
    text = str(cause).strip().splitlines()
    return f"{cause.__class__.__name__}: {text[0]}" if text else cause.__class__.__name__


def load_classifier(path: str | Path) -> tuple[AudioClassifier, dict[str, Any]]:
    """Rebuild the module a checkpoint was trained with, weights loaded, in eval mode."""
    ckpt = read_checkpoint(path)
    info = ckpt["esc50"]
    config = copy.deepcopy(info["config"])
    config["model"]["net"] = offline_net(config["model"]["net"])
    config["compile"] = False
    try:
        module = build_module(OmegaConf.create(config), list(info["data"]["class_names"]))
    except UserError as err:
        raise UserError(f"{path}: {err}") from err
    except Exception as err:  # a damaged or hand-edited config: say so instead of a traceback
        raise UserError(f"{path}: its config does not build a model ({_first_line(err)})") from err
    try:
        module.load_state_dict(plain_state_dict(ckpt["state_dict"]))
    except RuntimeError as err:
        detail = str(err).strip().splitlines()
        shown = "; ".join(line.strip() for line in detail[1:3]) or detail[0]
        raise UserError(f"{path}: its weights do not fit the model its config names ({shown})") from err
    module.run_info = info
    module.history = list(info.get("history", []))
    return module.eval(), info
