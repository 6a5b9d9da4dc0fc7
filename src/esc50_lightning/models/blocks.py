"""Building blocks shared by the architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esc50_lightning.errors import UserError


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions, the first strided (downsampling instead of pooling), plus a shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 2):
        super().__init__()
        self.conv1 = ConvBNReLU(in_ch, out_ch, stride)
        self.conv2 = nn.Sequential(
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch)
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ClassifierHead(nn.Module):
    """Global pooling (any input size) → dropout → linear.

    ``pooling="avg"`` averages over frequency and time. ``pooling="avgmax"`` averages over frequency,
    then adds the max and the mean over time (as PANNs do): a short event still counts fully.
    """

    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.3, pooling: str = "avg"):
        super().__init__()
        if pooling not in ("avg", "avgmax"):
            raise UserError(f"pooling={pooling!r}: choose 'avg' or 'avgmax'")
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(dim=2)  # (B, C, T)
        x = x.mean(dim=2) if self.pooling == "avg" else x.amax(dim=2) + x.mean(dim=2)
        return self.fc(self.dropout(x))


class AvgPool2x2(nn.Module):
    """2x2 average pooling that keeps an odd last row or column, averaged on its own: what
    ``nn.AvgPool2d(2, ceil_mode=True)`` computes, here as a copy of that edge (so each of its
    windows averages its own values twice) and plain 2x2 pooling.

    It replaced ceil_mode when compiled bf16 runs on a CPU trained NaN and ceil-mode windows
    over odd-sized maps (7x25 after three poolings of a 56x200 crop) were blamed; the fault
    proved broader (compiled bf16 corrupts memory on that CPU, docs/performance.md). Kept: the
    same values and gradients, and only plain pooling for a compiler to handle.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.cat rather than F.pad(mode="replicate"), whose backward inductor mis-strides
        # for channels_last inputs
        if x.shape[-2] % 2:
            x = torch.cat([x, x[..., -1:, :]], dim=-2)
        if x.shape[-1] % 2:
            x = torch.cat([x, x[..., -1:]], dim=-1)
        return F.avg_pool2d(x, 2)


class VGGBlock(nn.Sequential):
    """Two 3x3 conv layers at full resolution, then 2x2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch), AvgPool2x2())


class InputNorm(nn.Module):
    """Optional batch norm of every mel row of the input on its own (PANNs' ``bn0``).

    ``rows`` is the input's height (the mel rows the network sees: the crop's height); ``0`` or
    ``False`` turns it off. Fixing the height is the price of per-frequency statistics, so a
    mismatch is an error naming both heights rather than a silent broadcast.
    """

    def __init__(self, rows: int | bool = 0):
        super().__init__()
        if rows is True:
            raise UserError("input_bn takes the number of mel rows the network sees (e.g. 56), not true")
        self.rows = int(rows)
        self.bn = nn.BatchNorm2d(self.rows) if self.rows else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is None:
            return x
        if x.shape[-2] != self.rows:
            raise UserError(
                f"input_bn normalises {self.rows} mel rows, but the input has {x.shape[-2]}: "
                f"set model.net.input_bn to the crop's height"
            )
        # Mel rows become channels so each gets its own statistics: (B, 1, H, W) -> (B, H, 1, W).
        return self.bn(x.transpose(1, 2)).transpose(1, 2)
