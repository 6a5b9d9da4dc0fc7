"""Several trained networks over the same log-mel input, answering as one."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from esc50_lightning.errors import UserError


class Ensemble(nn.Module):
    """Averages the members' class probabilities; returns the log of that average.

    Returning log-probabilities keeps the ensemble a drop-in ``nn.Module`` for the classifier:
    softmax of the output is the mean probability, its argmax the ensemble's vote, and
    cross-entropy on it is the negative log-likelihood of the averaged prediction.
    """

    def __init__(self, members: Sequence[nn.Module], num_classes: int = 50):
        super().__init__()
        if len(members) < 2:
            raise UserError(f"an ensemble needs at least two members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.num_classes = num_classes  # what every member must answer over

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([member(x).log_softmax(dim=-1) for member in self.members])
        if log_probs.shape[-1] != self.num_classes:
            raise UserError(
                f"ensemble members output {log_probs.shape[-1]} classes, expected {self.num_classes}"
            )
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))
