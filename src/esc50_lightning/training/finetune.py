"""Fine-tuning a pretrained network: its backbone frozen for the first epochs, then trained at a
lower learning rate than the new head (``AudioClassifier``'s ``backbone_lr_scale``).

A network opts in by naming its parts: ``backbone_parameters()`` and ``head_parameters()``
(``models.Cnn14`` does).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn

from esc50_lightning.errors import UserError


def backbone_of(net: nn.Module) -> list[nn.Parameter]:
    """The pretrained parameters of ``net`` (everything but its new head)."""
    net = getattr(net, "_orig_mod", net)  # torch.compile's wrapper
    if not hasattr(net, "backbone_parameters"):
        raise UserError(
            f"{net.__class__.__name__} has no pretrained backbone to freeze or train at a lower rate: "
            "freezing (callbacks=finetune) and optim.backbone_lr_scale need a model such as model=cnn14"
        )
    return list(net.backbone_parameters())


def set_backbone_frozen(net: nn.Module, frozen: bool) -> None:
    """Stop (or restart) gradients to the backbone, its batch norms' running statistics with them."""
    backbone = {id(p) for p in backbone_of(net)}
    for p in net.parameters():
        if id(p) in backbone:
            p.requires_grad_(not frozen)
    # A frozen backbone does not move at all: its batch norms keep their running statistics.
    # (Set back explicitly: Lightning restores the modes it found after every validation.)
    for module in net.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and params and id(params[0]) in backbone:
            module.train(net.training and not frozen)


class FreezeBackbone(L.Callback):
    """Train only the head for the first ``epochs`` epochs (counted from 1: ``epochs=3`` freezes
    epochs 1-3), then everything. ``epochs=0`` never freezes."""

    def __init__(self, epochs: int = 3):
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise UserError(f"callbacks.freeze_backbone.epochs={epochs} must be a whole number >= 0")
        self.epochs = epochs

    def frozen_at(self, epoch_index: int) -> bool:
        """Whether the backbone is frozen in the epoch of Lightning's (0-based) ``current_epoch``."""
        return epoch_index < self.epochs

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        backbone_of(pl_module.net)  # a model without a backbone: say so before training

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Every batch: Lightning puts the whole module back in train mode after validation.
        set_backbone_frozen(pl_module.net, self.frozen_at(trainer.current_epoch))
