"""The bias-corrected EMA of the weights (``callbacks=ema``), against a hand computation."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config
from hydra.utils import instantiate
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from esc50_lightning.errors import UserError
from esc50_lightning.training.ema import count_on_host
from esc50_lightning.training.schedules import ema_multi_avg_fn


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


@pytest.mark.parametrize("host_count", [False, True], ids=["torch's AveragedModel", "count on the host"])
def test_average_is_the_bias_corrected_exponential_mean_of_the_weights_seen(host_count: bool) -> None:
    """Both ways of counting give the same average: torch's (the count a device tensor) and
    ``count_on_host``'s (a host integer, what the callback uses)."""
    decay = 0.9
    model = Tiny()
    average = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(decay), use_buffers=True)
    if host_count:
        average = count_on_host(average)
    values = [3.0, -1.0, 4.0, 1.0, 5.0]
    for t, value in enumerate(values):
        model.w.data.fill_(value)
        model.count.fill_(10 * (t + 1))
        average.update_parameters(model)
        weights = [decay ** (t - i) for i in range(t + 1)]
        expected = sum(w * v for w, v in zip(weights, values, strict=False)) / sum(weights)
        assert average.module.w.tolist() == pytest.approx([expected] * 2)
        assert average.module.count.item() == 10 * (t + 1)  # a count is copied, not averaged
    # By hand after two updates: (0.9 * 3 + 1 * -1) / (0.9 + 1).
    first_two = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(decay), use_buffers=True)
    first_two = count_on_host(first_two) if host_count else first_two
    for value in (3.0, -1.0):
        model.w.data.fill_(value)
        first_two.update_parameters(model)
    assert first_two.module.w[0].item() == pytest.approx(1.7 / 1.9)


def test_early_on_the_first_weights_fade_and_late_it_is_torchs_ema() -> None:
    decay = 0.99
    model = Tiny()
    ours = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(decay), use_buffers=True)
    plain = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    generator = torch.Generator().manual_seed(0)
    model.w.data.fill_(100.0)  # a far-off first point, as random initial weights are
    for step in range(3000):
        ours.update_parameters(model)
        plain.update_parameters(model)
        if step == 50:
            # torch's EMA still holds 0.99**50 = 60 % of the first point; ours holds 1/(sum of weights).
            assert plain.module.w[0].item() > 55 and ours.module.w[0].item() < 5
        model.w.data = torch.randn(2, generator=generator)
    # float32 rounding apart (ours subtracts, scales and adds where torch's lerps)
    torch.testing.assert_close(ours.module.w, plain.module.w, atol=1e-7, rtol=0)


def test_the_ema_callback_config_uses_it() -> None:
    cfg = compose_config("callbacks=ema")
    update = instantiate(cfg.callbacks.ema.multi_avg_fn)
    model = Tiny()
    average = AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    for value in (0.0, 1.0):
        model.w.data.fill_(value)
        average.update_parameters(model)
    decay = cfg.callbacks.ema.multi_avg_fn.decay
    assert average.module.w[0].item() == pytest.approx(1 / (1 + decay))


def test_decay_out_of_range_is_refused() -> None:
    for decay in (1.0, -0.1):
        with pytest.raises(UserError, match="decay must be in"):
            ema_multi_avg_fn(decay)


def test_an_update_reads_nothing_back_from_the_device(monkeypatch) -> None:
    """On a GPU, reading a tensor on the host (``int(t)``, ``if t``, ``.item()``) waits for every
    queued kernel: once per training step for the EMA. The update computes its weight from the
    count where the count is; here any host read of a tensor fails the test."""
    update = ema_multi_avg_fn(0.9)
    averaged, current = [torch.zeros(3), torch.zeros(2)], [torch.ones(3), torch.full((2,), 2.0)]
    counts = [torch.zeros((), dtype=torch.long)], [torch.ones((), dtype=torch.long)]

    def read(*args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, read)
    update(averaged, current, torch.tensor(1))  # the second update: weight 0.1 / (1 - 0.81)
    update(*counts, torch.tensor(1))  # integer buffers are copied
    monkeypatch.undo()
    assert averaged[0].tolist() == pytest.approx([0.1 / 0.19] * 3)
    assert averaged[1].tolist() == pytest.approx([0.2 / 0.19] * 2)
    assert counts[0][0].item() == 1


def test_the_callback_keeps_the_update_count_on_the_host() -> None:
    """torch's AveragedModel branches on its count in Python at every update; on the averaged
    weights' device (here "meta", standing for a GPU) that would be a host sync per step."""
    import lightning as L

    from esc50_lightning.training.ema import WeightAveraging

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(2, 2)

    callback = WeightAveraging(device="meta", multi_avg_fn=ema_multi_avg_fn(0.9))
    callback.setup(None, Module(), "fit")
    average = callback._average_model
    assert average is not None and next(average.module.parameters()).device.type == "meta"
    assert average.n_averaged.device.type == "cpu" and "n_averaged" in dict(average.named_buffers())
    assert type(callback).__name__ == "WeightAveraging"  # resumed runs find their state by this name
