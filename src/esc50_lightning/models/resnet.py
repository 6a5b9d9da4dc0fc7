"""torchvision's ResNet18 with a one-channel stem and optional ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from esc50_lightning.errors import UserError


def _imagenet_state_dict(weights_path: str | None) -> dict[str, torch.Tensor]:
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(f"{path}: ResNet18 weights file not found (model.net.weights_path)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a corrupt or foreign file
            raise UserError(f"{path}: not a readable PyTorch state dict ({err.__class__.__name__})") from err
        return state.get("state_dict", state) if isinstance(state, dict) else state
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # no network, proxy, hash mismatch ...
        hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
        raise UserError(
            f"could not download ImageNet weights from {weights.url} ({err.__class__.__name__}). "
            f"Download that file elsewhere and either put it in {hub_dir}/ or pass "
            "model.net.weights_path=/path/to/resnet18-f37072fd.pth"
        ) from err


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
