"""Where features become logits: plain ``nn.Module`` CNNs over ``(B, 1, F, T)`` log-mels, any size."""

from esc50_lightning.models.cnn import CNN4, CNN8, VGG8
from esc50_lightning.models.cnn14 import Cnn14
from esc50_lightning.models.ensemble import Ensemble
from esc50_lightning.models.resnet import ResNet18

__all__ = ["CNN4", "CNN8", "VGG8", "Cnn14", "Ensemble", "ResNet18"]
