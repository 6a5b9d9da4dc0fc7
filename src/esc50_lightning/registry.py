"""Names → classes for every part a checkpoint may name: ours, listed here, plus classes of modules
the user trusts by name in ``ESC50_TRUSTED_MODULES``.

A checkpoint's run record names its network by a key of this registry (``vgg8``) or, for a class
of a user's module, by ``module:Class``. Nothing else from a file ever chooses what code runs:
there is no dotted path to follow, and a module the user has not listed is never imported.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

from torch import nn

from esc50_lightning.errors import UserError
from esc50_lightning.models import CNN4, CNN8, VGG8, Cnn14, ResNet18

# The one documented setting: modules (comma- or space-separated) whose classes a checkpoint may name.
TRUST_SETTING = "ESC50_TRUSTED_MODULES"

_MODULE = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_USER_KEY = re.compile(rf"^({_MODULE}):([A-Za-z_]\w*)$")
_OUR_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry:
    """One kind of part (``model``): our classes by short key, a trusted user module's by
    ``module:Class``; every class found must be a subclass of ``base``."""

    def __init__(self, kind: str, base: type, ours: dict[str, type]):
        self.kind, self.base, self.ours = kind, base, dict(ours)

    def key_of(self, cls: type) -> str:
        """The key a run record names ``cls`` by."""
        for key, known in self.ours.items():
            if known is cls:
                return key
        return f"{cls.__module__}:{cls.__qualname__}"

    def resolve(self, key: Any, where: str) -> type:
        """The class ``key`` names, or a ``UserError`` naming ``where`` (the file) and the fix."""
        if isinstance(key, str) and key in self.ours:
            return self.ours[key]
        match = _USER_KEY.match(key) if isinstance(key, str) else None
        if match is None:
            if isinstance(key, str) and _OUR_KEY.match(key):
                raise UserError(
                    f"{where}: names {self.kind} '{key}', which this esc50-lightning does not have "
                    f"(it has {', '.join(sorted(self.ours))})"
                )
            raise UserError(f"{where}: its {self.kind} is not named by a registry key")
        module_name, name = match.groups()
        if module_name not in trusted_modules():
            raise UserError(
                f"{where}: its {self.kind} {name} comes from module {module_name}, which you have not "
                f"trusted; if you trust it, set {TRUST_SETTING}={module_name}"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise UserError(f"{where}: trusted module {module_name} cannot be imported ({err})") from None
        cls = vars(module).get(name)  # defined or imported there: no attribute chain is followed
        if not (isinstance(cls, type) and issubclass(cls, self.base) and cls.__module__ == module_name):
            raise UserError(
                f"{where}: module {module_name} defines no {self.kind} class {name} "
                f"(a subclass of {self.base.__name__})"
            )
        return cls


def trusted_modules() -> set[str]:
    """The modules named in ``ESC50_TRUSTED_MODULES``."""
    raw = os.environ.get(TRUST_SETTING, "")
    return {m for m in re.split(r"[,\s]+", raw) if re.fullmatch(_MODULE, m)}


MODELS = Registry(
    "model", nn.Module, {"cnn4": CNN4, "cnn8": CNN8, "vgg8": VGG8, "resnet18": ResNet18, "cnn14": Cnn14}
)


def weight_arguments(cls: type) -> tuple[str, ...]:
    """The constructor arguments of ``cls`` that fetch or read pretrained weights (a class lists
    them in ``weight_arguments``). A trained network's weights come from its checkpoint, so a run
    record never holds them and a rebuild never passes them."""
    return tuple(getattr(cls, "weight_arguments", ()))
