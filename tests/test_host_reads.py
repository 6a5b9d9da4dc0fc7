"""A training step never reads a tensor back on the host. On a GPU every such read (``if t``,
``int(t)``, ``.item()``) waits for all queued kernels, and a GPU that waits for the CPU to queue
the next step idles; on a CPU the same code shows the reads when the tensors refuse them."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config
from hydra.utils import instantiate
from torch.optim.swa_utils import AveragedModel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from esc50_lightning.factory import build_module
from esc50_lightning.training.ema import count_on_host

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
    ema = count_on_host(ema)  # as the callback keeps it (tests/test_ema.py)
    ema.update_parameters(module)  # the first update copies
    labels = torch.arange(CLIPS) * 6
    reference = module.metrics["train_"].clone()
    batches = []
    for step, size in enumerate((CLIPS, 5)):  # uneven batches: the epoch's loss weighs them by size
        torch.manual_seed(step)
        clips = {"x": waves[:size], "y": labels[:size], "row": torch.arange(size)}
        batch = module.on_after_batch_transfer(clips, 0)
        assert len(batch["targets"]) == 2  # between-class mixing drawn: two label terms
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
        (lam, own), (_, partner) = batch["targets"]
        assert torch.equal(own, batch["y"])
        assert torch.equal(y, own if lam >= 0.5 else partner)  # the dominant clip's label
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


class HostCopies(TorchDispatchMode):
    """Records every operation that touches tensors on the host and on another device at once:
    a copy from the host (a blocking one, ``.to(device)``, waits on a GPU for the whole queue)
    or host data mixed into device work."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if len({t.device.type for t in tensors}) > 1:
            self.seen.append(str(func))
        return out


def test_a_long_schedule_step_on_a_device_takes_nothing_from_the_host() -> None:
    """The whole training step of experiment=long_schedule on the "meta" device, standing for a
    GPU: the frontend's draws (crop, stretch, shift, masks, mixing partners), forward, loss,
    backward, AdamW's step and the EMA's update. A host read fails there (meta tensors have no
    values) and a copy from the host shows in ``HostCopies``: either is a sync per step on a GPU."""
    cfg = compose_config("experiment=long_schedule")
    module = build_module(cfg, [f"c{i}" for i in range(50)]).train().to("meta")
    optimizer = module.optimizer_factory(params=module.parameters())
    ema = count_on_host(
        AveragedModel(module, multi_avg_fn=instantiate(cfg.callbacks.ema.multi_avg_fn), use_buffers=True)
    )
    ema.update_parameters(module)  # the first update copies
    batch = {
        "x": torch.empty(CLIPS, *module.features.input_shape, device="meta"),  # cached log-mels
        "y": torch.zeros(CLIPS, dtype=torch.long, device="meta"),
        "row": torch.zeros(CLIPS, dtype=torch.long, device="meta"),
    }
    with HostCopies() as copies:
        for step in range(2):
            features = module.on_after_batch_transfer(batch, 0)
            loss = module.training_step(features, step)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            ema.update_parameters(module)
    assert copies.seen == []
    assert features["x"].shape == (CLIPS, 1, *module.features.output_shape)
    assert len(module._train_steps) == 2 and int(ema.n_averaged) == 3
