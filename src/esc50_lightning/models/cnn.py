"""The seed's two small CNNs and a VGG-style one, built from shared blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from esc50_lightning.models.blocks import ClassifierHead, ConvBNReLU, InputNorm, ResidualBlock, VGGBlock


class CNN4(nn.Module):
    """Four 3x3 conv layers, each followed by 2x2 max pooling, then global average pooling."""

    def __init__(
        self,
        num_classes: int = 50,
        channels: Sequence[int] = (32, 64, 128, 256),
        dropout: float = 0.3,
        input_bn: bool = False,
    ):
        super().__init__()
        self.input_norm = InputNorm(input_bn)
        layers: list[nn.Module] = []
        in_ch = 1
        for out_ch in channels:
            layers += [ConvBNReLU(in_ch, out_ch), nn.MaxPool2d(2, ceil_mode=True)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.head = ClassifierHead(in_ch, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.input_norm(x)))


class CNN8(nn.Module):
    """Eight 3x3 conv layers in four residual blocks; stride-2 convolutions replace pooling."""

    def __init__(
        self,
        num_classes: int = 50,
        channels: Sequence[int] = (32, 64, 128, 256),
        dropout: float = 0.3,
        input_bn: bool = False,
    ):
        super().__init__()
        self.input_norm = InputNorm(input_bn)
        blocks: list[nn.Module] = []
        in_ch = 1
        for out_ch in channels:
            blocks.append(ResidualBlock(in_ch, out_ch, stride=2))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.head = ClassifierHead(in_ch, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.input_norm(x)))


class VGG8(nn.Module):
    """Eight 3x3 conv layers in four VGG blocks (two convs, then pooling), PANNs-style pooling head.

    Convolving twice before each downsampling costs about twice the compute of ``CNN8`` at the
    same widths, and keeps more time-frequency detail in the first layers.
    """

    def __init__(
        self,
        num_classes: int = 50,
        channels: Sequence[int] = (32, 64, 128, 256),
        dropout: float = 0.3,
        input_bn: bool = False,
        pooling: str = "avgmax",
    ):
        super().__init__()
        self.input_norm = InputNorm(input_bn)
        blocks: list[nn.Module] = []
        in_ch = 1
        for out_ch in channels:
            blocks.append(VGGBlock(in_ch, out_ch))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.head = ClassifierHead(in_ch, num_classes, dropout, pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.input_norm(x)))
