"""A training step never reads a tensor back on the host. On a GPU every such read (``if t``,
``int(t)``, ``.item()``) waits for all queued kernels, and a GPU that waits for the CPU to queue
the next step idles; on a CPU the same code shows the reads when the tensors refuse them."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config
from hydra.utils import instantiate
from torch.optim.swa_utils import AveragedModel

from esc50_lightning.factory import build_module

# `waves` (conftest): the first clip of eight classes, 5 s at 44.1 kHz.
CLIPS = 8
READS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy")


@pytest.fixture
def refuse_host_reads(monkeypatch):
    """Inside ``with refuse_host_reads():`` any host read of a tensor fails the test."""

    def read(self, *args, **kwargs):
        raise AssertionError(f"a tensor {tuple(self.shape)} was read on the host")

    class Refuse:
        def __enter__(self):
            for name in READS:
                monkeypatch.setattr(torch.Tensor, name, read)

        def __exit__(self, *exc):
            monkeypatch.undo()

    return Refuse


def test_the_long_schedule_step_reads_nothing_back(waves: torch.Tensor, refuse_host_reads) -> None:
    """experiment=long_schedule's step on real clips: with the between-class mix drawn (on the
    CPU, before), forward, loss, the epoch's loss and predictions and backward read nothing back;
    the epoch's metrics, counted at its end, are the ones a per-step update gives."""
    cfg = compose_config("experiment=long_schedule")
    module = build_module(cfg, [f"c{i}" for i in range(50)]).train()
    ema = AveragedModel(module, multi_avg_fn=instantiate(cfg.callbacks.ema.multi_avg_fn), use_buffers=True)
    ema.n_averaged = torch.zeros((), dtype=torch.long)  # as the callback keeps it (tests/test_ema.py)
    ema.update_parameters(module)  # the first update copies
    labels = torch.arange(CLIPS) * 6
    reference = module.metrics["train_"].clone()
    batches = []
    for step, size in enumerate((CLIPS, 5)):  # uneven batches: the epoch's loss weighs them by size
        torch.manual_seed(step)
        clips = {"x": waves[:size], "y": labels[:size], "row": torch.arange(size)}
        batch = module.on_after_batch_transfer(clips, 0)
        assert "mix" in batch  # between-class mixing drawn
        with refuse_host_reads():
            loss = module.training_step(batch, step)
            loss.backward()
        # the EMA's update and its count on the host: tests/test_ema.py
        ema.update_parameters(module)
        module.zero_grad()
        batches.append(batch)
    # what the metrics would have counted step by step, against what the epoch's end counts once
    reference_loss = module.losses["train_"].clone()
    steps = list(module._train_steps)
    for (loss, size, prediction, y), batch in zip(module._train_steps, batches, strict=True):
        assert prediction.shape == y.shape == (size,) and size == len(batch["y"])
        lam, perm = batch["mix"]
        assert torch.equal(y, batch["y"] if lam >= 0.5 else batch["y"][perm])  # the dominant clip's label
        reference.update(prediction, y)
        reference_loss.update(loss, weight=size)
    module.count_train_steps()
    assert not module._train_steps
    counted = module.metrics["train_"].compute()
    for name, value in reference.compute().items():
        assert counted[name] == value, name
    assert module.losses["train_"].compute() == pytest.approx(float(reference_loss.compute()), rel=1e-6)
    by_hand = sum(float(loss) * size for loss, size, _, _ in steps) / (CLIPS + 5)
    assert float(module.losses["train_"].compute()) == pytest.approx(by_hand, rel=1e-6)
    assert int(ema.n_averaged) == 3


def test_an_epoch_with_non_finite_losses_says_so(caplog) -> None:
    """torchmetrics drops NaN losses from the epoch's mean; the log says how many steps had one."""
    import logging

    cfg = compose_config("model=cnn4")
    module = build_module(cfg, [f"c{i}" for i in range(50)]).train()
    y = torch.arange(4)
    module._train_steps = [
        (torch.tensor(2.0), 4, y, y),
        (torch.tensor(float("nan")), 4, y, y),
        (torch.tensor(4.0), 2, y[:2], y[:2]),
    ]
    with caplog.at_level(logging.WARNING, logger="esc50_lightning.training.classifier"):
        module.count_train_steps()
    assert "epoch 1: 1 of 3 training steps had a non-finite loss (left out of train/loss)" in caplog.text
    assert float(module.losses["train_"].compute()) == pytest.approx((2.0 * 4 + 4.0 * 2) / 6)
