"""torchvision's ResNet18 with a one-channel stem and optional ImageNet weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from esc50_lightning.checkpoints.record import load_weights_only
from esc50_lightning.downloads import fetch
from esc50_lightning.errors import UserError

# torchvision's ImageNet weights; the file name carries the first 8 hex digits of its sha256.
IMAGENET_URL = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
IMAGENET_FILE = IMAGENET_URL.rsplit("/", 1)[-1]
IMAGENET_SHA256 = IMAGENET_FILE.removesuffix(".pth").rsplit("-", 1)[-1]


def imagenet_weights_file() -> Path:
    """torchvision's ImageNet ResNet18 file, downloaded once into torch hub's ``checkpoints/``
    (where torchvision keeps it, so a copy it fetched before is reused) and sha256-checked."""
    dest = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE
    return fetch(
        IMAGENET_URL,
        dest,
        sha256=IMAGENET_SHA256,
        what="ImageNet weights",
        instead=f"download it elsewhere and put it at {dest}, "
        f"or pass model.net.weights_path=/path/to/{IMAGENET_FILE}",
    )


def _imagenet_state_dict(weights_path: str | None) -> dict[str, Any]:
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(f"{path}: ResNet18 weights file not found (model.net.weights_path)")
    else:
        path = imagenet_weights_file()
    state = load_weights_only(path, what="ResNet18 weights file")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a ResNet18 state dict (no tensors by parameter name)")
    return state


class ResNet18(nn.Module):
    """ResNet18 over one-channel spectrograms; ``pretrained`` folds ImageNet's RGB stem into one channel."""

    # Where pretrained weights come from: never recorded in, nor rebuilt from, a checkpoint.
    weight_arguments = ("pretrained", "weights_path")

    def __init__(
        self,
        num_classes: int = 50,
        pretrained: bool = False,
        weights_path: str | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        net = torchvision.models.resnet18(weights=None)
        if pretrained:
            state = _imagenet_state_dict(weights_path)
            missing = net.load_state_dict(state, strict=False)
            if missing.missing_keys:
                raise UserError(f"ImageNet weights lack ResNet18 keys: {missing.missing_keys[:3]}")
        rgb_stem = net.conv1.weight.detach()
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if pretrained:
            with torch.no_grad():  # sum over RGB: a grey image gives the same activations as before
                net.conv1.weight.copy_(rgb_stem.sum(dim=1, keepdim=True))
        net.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(net.fc.in_features, num_classes))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
