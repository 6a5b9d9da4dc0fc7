"""Read and verify a checkpoint as data: tensors and plain values, a run record of registry keys.

Nothing here builds objects (``factory.py`` does, from the verified record) and nothing read from
the file is used as a path, a name to import or an interpolation to resolve. The whole file is
checked, not only the parts a command reads, so every command refuses the same files.
"""

from __future__ import annotations

import errno
import importlib
import math
import pickle
import re
import stat
from pathlib import Path
from typing import Any

import torch

from esc50_lightning.errors import UserError

# The run record's layout. Version 2 names parts by registry key with plain keyword values.
FORMAT = 2

# The run record's fields, all of them: a record holding anything else is refused, so no field a
# command might one day read (a data folder, a download address) can come from someone's file.
RECORD_FIELDS = {
    "format", "model_name", "net", "features", "data", "seed", "precision", "history", "members",
    "eval_crop_set_by_pack",
}  # fmt: skip
DATA_FIELDS = {"dataset", "fold", "protocol", "splits", "class_names", "sample_rate", "clip_seconds"}
FEATURE_FIELDS = {"logmel", "crop", "eval_crop", "eval_crops", "normalize"}

# Values a checkpoint may hold anywhere: plain data and tensors (what weights_only can load).
_SCALARS = (type(None), bool, int, float, str, torch.dtype, torch.device, torch.Size)


def checkpoint_path(path: str | Path) -> Path:
    """``path`` as a regular file that exists, or a ``UserError`` saying what it is instead (a
    FIFO or a device would block a reader; a symlink loop cannot be opened)."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"{path}: a symbolic link that loops; give the checkpoint file itself") from None
        raise UserError(f"{path}: checkpoint not found") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: is a folder, not a checkpoint file")
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: not a regular file (a pipe or a device?); give a checkpoint file")
    return path


def _shown(text: str, limit: int = 60) -> str:
    """A string from a file as it may be printed: control characters escaped, cut short."""
    shown = repr(text)[1:-1]
    return shown[:limit] + ("..." if len(shown) > limit else "")


def _plain_problem(value: Any, where: str, depth: int = 0) -> str | None:
    """What makes ``value`` (found at ``where``) something other than plain data, or None."""
    if depth > 64:
        return f"{where} nests too deeply"
    if isinstance(value, str):
        if not value.isprintable():
            return f"{where} holds a string with control characters"
        if "${" in value:
            return f"{where} holds an interpolation (${{...}}); a checkpoint holds plain values"
        return None
    if isinstance(value, (torch.Tensor, *_SCALARS)):
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                if problem := _plain_problem(key, f"{where} key", depth + 1):
                    return problem
                if key.startswith("_") and key.endswith("_") and len(key) > 2:
                    return f"{where} holds {key}: a checkpoint names no code to build"
            elif not isinstance(key, int):
                return f"{where} has a key of type {type(key).__name__}"
            if problem := _plain_problem(item, f"{where}.{key}" if where else str(key), depth + 1):
                return problem
        return None
    if isinstance(value, list | tuple | set):
        for n, item in enumerate(value):
            if problem := _plain_problem(item, f"{where}[{n}]", depth + 1):
                return problem
        return None
    return f"{where} holds a {type(value).__name__}"


def _is_plain_value(value: Any) -> bool:
    """A keyword value a record may pass to a constructor: numbers, strings, lists, mappings."""
    if isinstance(value, bool | int | str) or value is None:
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_plain_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain_value(v) for k, v in value.items())
    return False


def _number(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def _unknown(fields: dict[str, Any], known: set[str]) -> str | None:
    extra = sorted(str(k) for k in fields if k not in known)
    return ", ".join(extra)[:80] if extra else None


def _check_part(part: Any, where: str, bad: Any) -> None:
    """``{"class": key, "kwargs": {...}}``: a registry key and plain keyword values."""
    if not isinstance(part, dict) or not isinstance(part.get("class"), str):
        raise bad(f"{where} names no registry class")
    if extra := _unknown(part, {"class", "kwargs"}):
        raise bad(f"{where} holds fields a run record does not have: {extra}")
    kwargs = part.get("kwargs", {})
    if not isinstance(kwargs, dict) or not _is_plain_value(kwargs):
        raise bad(f"{where}.kwargs are not plain values (numbers, strings, lists)")


def check_record(path: Path, record: Any) -> None:
    """Refuse a run record that is not what this project writes, naming what is wrong."""

    def bad(what: str) -> UserError:
        return UserError(f"{path}: not a usable esc50-lightning checkpoint ({what})")

    if not isinstance(record, dict):
        raise bad("its run record is not a mapping")
    if record.get("format") != FORMAT:
        raise bad(
            "its run record is from esc50-lightning 1.0 or older, which named code to build; "
            "retrain it, or re-save it with the version that wrote it"
            if "config" in record
            else "its run record has no known format"
        )
    if extra := _unknown(record, RECORD_FIELDS):
        raise bad(f"its run record holds fields esc50-lightning does not write: {extra}")
    if not isinstance(record.get("model_name"), str):
        raise bad("its run record has no model name")
    net = record.get("net")
    if isinstance(net, dict) and net.get("class") == "ensemble":
        if extra := _unknown(net, {"class", "members"}):
            raise bad(f"net holds fields a run record does not have: {extra}")
        members = net.get("members")
        if not isinstance(members, list) or len(members) < 2:
            raise bad("its ensemble lists fewer than two members")
        for n, member in enumerate(members):
            _check_part(member, f"net.members[{n}]", bad)
    else:
        _check_part(net, "net", bad)
    features = record.get("features")
    if not isinstance(features, dict) or not _is_plain_value(features):
        raise bad("its features are not plain values")
    if not isinstance(features.get("logmel"), dict):
        raise bad("its features name no log-mel settings")
    if extra := _unknown(features, FEATURE_FIELDS):
        raise bad(f"its features hold fields esc50-lightning does not write: {extra}")
    data = record.get("data")
    if not isinstance(data, dict):
        raise bad("the run record has no data description")
    if extra := _unknown(data, DATA_FIELDS):
        raise bad(f"its data description holds fields esc50-lightning does not write: {extra}")
    names = data.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise bad("the run record has no list of class names")
    for key in ("sample_rate", "clip_seconds"):
        if not _number(data.get(key)):
            raise bad(f"data.{key} in the run record is not a positive number")
    splits = data.get("splits")
    if not isinstance(splits, dict) or not all(
        isinstance(splits.get(k), list) and all(isinstance(f, int) for f in splits[k])
        for k in ("train", "val", "test")
    ):
        raise bad("the run record's data.splits are not lists of folds")
    if data.get("protocol") not in ("cv", "holdout"):
        raise bad("the run record's data.protocol is neither cv nor holdout")
    history = record.get("history", [])
    if not isinstance(history, list) or not all(
        isinstance(h, dict) and isinstance(h.get("epoch"), int) for h in history
    ):
        raise bad("the run record's history is not a list of epochs")


def _check_weights(path: Path, state: Any) -> None:
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UserError(
            f"{path}: not a usable esc50-lightning checkpoint ('state_dict' is not names to tensors)"
        )
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(
                f"{path}: weight '{_shown(key)}' holds NaN or infinite values; this model cannot be used"
            )


# numpy arrays, scalars and dtypes: data a training script may have saved next to the weights (a
# sampler's state, say). Allowed, by name, when a file holds them; nothing else is.
NUMPY_DATA = ("_reconstruct", "scalar", "ndarray", "dtype")
NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.dtypes")
_REFUSED = re.compile(r"GLOBAL (\S+)|but got <class '([^']+)'>")


def _numpy_data(name: str) -> tuple[Any, str] | None:
    """``(object, name)`` for ``torch.serialization.safe_globals`` if ``name`` is numpy data."""
    module, _, attr = name.rpartition(".")
    if module not in NUMPY_MODULES:  # a fixed set: no module named by the file is imported
        return None
    if attr not in NUMPY_DATA and not (module == "numpy.dtypes" and attr.endswith("DType")):
        return None
    try:
        return getattr(importlib.import_module(module), attr), name
    except (ImportError, AttributeError):
        return None


def load_weights_only(path: str | Path, what: str = "checkpoint") -> Any:
    """The one reader of weight files (ours, PANNs', ImageNet's): ``torch.load(weights_only=True)``,
    so tensors and plain values only (plus numpy data, by name); a file that is not a regular file
    is refused before it is opened, a file holding anything else in one line."""
    path = checkpoint_path(path)
    allowed: list[tuple[Any, str]] = []
    while True:
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if "Weights only load failed" not in str(err):  # not a pickle at all (e.g. an audio file)
                raise UserError(
                    f"{path}: not a readable {what} (not a file torch.save wrote, or damaged)"
                ) from None
            found = _REFUSED.search(str(err))
            name = (found[1] or found[2]) if found else None
            extra = _numpy_data(name) if name else None
            if extra is None or extra in allowed:
                held = f"GLOBAL {_shown(name, 80)}" if name else "an unsupported object"
                raise UserError(
                    f"{path}: refused, it holds Python objects that could run code ({held}); "
                    f"a {what} holds only tensors and plain values"
                ) from None
            allowed.append(extra)
        except Exception:  # truncated, or not a file torch.save wrote: which error depends on the bytes
            raise UserError(
                f"{path}: not a readable {what} (not a file torch.save wrote, or damaged)"
            ) from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint as data and verify all of it: tensors and plain values only (torch's
    ``weights_only``), no names of code, no interpolations, printable strings, finite weights and
    a run record of the current format. Returns the file's dictionary."""
    path = checkpoint_path(path)
    ckpt = load_weights_only(path)
    if not isinstance(ckpt, dict) or "esc50" not in ckpt or "state_dict" not in ckpt:
        raise UserError(
            f"{path}: not a usable esc50-lightning checkpoint (no 'esc50' run record and 'state_dict')"
        )
    check_record(path, ckpt["esc50"])  # first: a record from 1.0 is named as such
    if problem := _plain_problem(ckpt, ""):
        raise UserError(f"{path}: refused, {_shown(problem.lstrip('.'), 160)}")
    _check_weights(path, ckpt["state_dict"])
    return ckpt


def plain_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State-dict keys as an uncompiled module has them (torch.compile inserts ``._orig_mod.``)."""
    return {k.replace("._orig_mod.", "."): v for k, v in state.items()}
