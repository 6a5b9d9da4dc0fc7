"""The seed's two small CNNs and a VGG-style one, built from shared blocks."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial

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
        input_bn: int | bool = 0,
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


class StackedBlocks(nn.Module):
    """Optional input norm → one block per channel width → global pooling head."""

    def __init__(
        self,
        make_block: Callable[[int, int], nn.Module],
        num_classes: int,
        channels: Sequence[int],
        dropout: float,
        input_bn: int | bool,
        pooling: str = "avg",
    ):
        super().__init__()
        self.input_norm = InputNorm(input_bn)
        widths = [1, *channels]
        self.features = nn.Sequential(*(make_block(i, o) for i, o in itertools.pairwise(widths)))
        self.head = ClassifierHead(widths[-1], num_classes, dropout, pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.input_norm(x)))


class CNN8(StackedBlocks):
    """Eight 3x3 conv layers in four residual blocks; stride-2 convolutions replace pooling."""

    def __init__(
        self,
        num_classes: int = 50,
        channels: Sequence[int] = (32, 64, 128, 256),
        dropout: float = 0.3,
        input_bn: int | bool = 0,
    ):
        super().__init__(partial(ResidualBlock, stride=2), num_classes, channels, dropout, input_bn)


class VGG8(StackedBlocks):
    """Eight 3x3 conv layers in four VGG blocks (two convs, then pooling), PANNs-style pooling head.

    Convolving twice before each downsampling costs about twice the compute of ``CNN8`` at the
    same widths, and keeps more time-frequency detail in the first layers.
    """

    def __init__(
        self,
        num_classes: int = 50,
        channels: Sequence[int] = (32, 64, 128, 256),
        dropout: float = 0.3,
        input_bn: int | bool = 0,
        pooling: str = "avgmax",
    ):
        super().__init__(VGGBlock, num_classes, channels, dropout, input_bn, pooling)
