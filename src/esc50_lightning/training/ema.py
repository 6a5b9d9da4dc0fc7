"""The EMA of the weights as a Lightning callback (``callbacks=ema``) that never waits for the GPU."""

from __future__ import annotations

from collections import defaultdict
from itertools import chain

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging as LightningWeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel


class HostCountAveragedModel(AveragedModel):
    """``AveragedModel`` whose update count (``n_averaged``) lives on the host.

    torch's ``update_parameters`` branches on the count in Python (a host read) and hands it to
    ``multi_avg_fn`` copied to the weights' device (a blocking copy): on a GPU either one makes
    the CPU wait for every queued kernel, once per training step, and the GPU then idles while
    the next step is queued. Here the count is a host integer: the branches are free and
    ``multi_avg_fn`` gets it as an ``int`` (``ema_multi_avg_fn`` turns it into a scalar weight).
    """

    def update_parameters(self, model: nn.Module) -> None:
        if self.multi_avg_fn is None or self.n_averaged.device.type != "cpu":
            return super().update_parameters(model)  # torch's own averaging
        count = int(self.n_averaged)  # a host tensor: no sync
        groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = defaultdict(lambda: ([], []))
        for ours, theirs in zip(self._averaged(self.module), self._averaged(model), strict=True):
            theirs = theirs.detach().to(ours.device)
            if count == 0:  # the first update copies, as torch's does
                ours.detach().copy_(theirs)
            else:
                averaged, current = groups[(ours.device, ours.dtype)]
                averaged.append(ours.detach())
                current.append(theirs)
        for averaged, current in groups.values():  # foreach kernels take one device and dtype
            self.multi_avg_fn(averaged, current, count)
        if not self.use_buffers:  # buffers follow the model, as in torch's
            for ours, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
                ours.detach().copy_(theirs.detach().to(ours.device))
        self.n_averaged += 1

    def _averaged(self, module: nn.Module):
        return chain(module.parameters(), module.buffers()) if self.use_buffers else module.parameters()


def count_on_host(average: AveragedModel) -> HostCountAveragedModel:
    """``average`` with its update count (``n_averaged``) on the host and updated as
    ``HostCountAveragedModel`` (the same state, so checkpoints load either way). A fresh count is
    0; a resumed run loads its count into this buffer afterwards."""
    average.n_averaged = torch.zeros_like(average.n_averaged, device="cpu")  # replaces the buffer
    average.__class__ = HostCountAveragedModel  # adds behaviour only, no state
    return average


class WeightAveraging(LightningWeightAveraging):
    """Lightning's ``WeightAveraging`` with the update count kept on the host
    (``HostCountAveragedModel``): no host sync per training step.

    Same class name as Lightning's, so the callback state of runs saved before (keyed by class
    name) still restores on resume.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self._average_model is not None:
            self._average_model = count_on_host(self._average_model)
