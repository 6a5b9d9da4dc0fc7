"""The EMA of the weights as a Lightning callback (``callbacks=ema``) that never waits for the GPU."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging as LightningWeightAveraging
from torch.optim.swa_utils import AveragedModel


def count_on_host(average: AveragedModel) -> AveragedModel:
    """``average`` with its update count (``n_averaged``) on the host, where torch's branches on
    it at every update cost no GPU sync. A fresh count is 0; a resumed run loads its count into
    this buffer afterwards."""
    average.n_averaged = torch.zeros_like(average.n_averaged, device="cpu")  # replaces the buffer
    return average


class WeightAveraging(LightningWeightAveraging):
    """Lightning's ``WeightAveraging`` with the update count kept on the host.

    torch's ``AveragedModel`` keeps its count (``n_averaged``) on the averaged weights' device and
    branches on it in Python at every update (``if self.n_averaged > 0``): on a GPU, a host sync
    per training step, which leaves the GPU idle while the CPU queues the next step. On the host
    the same branches cost nothing; the update itself (``ema_multi_avg_fn``) reads nothing back.

    Same class name as Lightning's, so the callback state of runs saved before (keyed by class
    name) still restores on resume.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self._average_model is not None:
            count_on_host(self._average_model)
