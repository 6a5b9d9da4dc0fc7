"""Epoch metrics are computed over the whole epoch and equal a hand computation."""

from __future__ import annotations

import numpy as np
import torch

from esc50_lightning.features import FeatureExtractor, LogMel
from esc50_lightning.models import CNN4
from esc50_lightning.training.classifier import AudioClassifier


def _hand_metrics(y: np.ndarray, pred: np.ndarray, n: int) -> dict[str, float]:
    precision, recall, f1 = [], [], []
    for c in range(n):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return {
        "acc": float(np.mean(pred == y)),
        "precision": np.mean(precision),
        "recall": np.mean(recall),
        "f1": np.mean(f1),
    }


def test_epoch_metrics_equal_hand_computation_over_uneven_batches():
    n = 5
    module = AudioClassifier(
        net=CNN4(num_classes=n),
        features=FeatureExtractor(LogMel(), 220500),
        optimizer=torch.optim.Adam,
        class_names=[f"c{i}" for i in range(n)],
    )
    logged: dict[str, float] = {}
    module.log_dict = lambda values, **kw: logged.update({k: float(v) for k, v in values.items()})
    torch.manual_seed(0)
    # Two batches of different sizes: a mean of per-batch metrics would differ from the epoch value.
    batches = [(torch.randn(3, n), torch.tensor([0, 1, 2])), (torch.randn(17, n), torch.randint(0, n, (17,)))]
    for logits, y in batches:
        module.metrics["val_"].update(logits, y)
        loss = torch.nn.functional.cross_entropy(logits, y)
        module.losses["val_"].update(loss, weight=len(y))
    values = module._epoch_values("val")

    logits = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    hand = _hand_metrics(y.numpy(), logits.argmax(1).numpy(), n)
    for name, expected in hand.items():
        assert abs(values[f"val/{name}"] - expected) < 1e-6, name
    expected_loss = float(torch.nn.functional.cross_entropy(logits, y))
    assert abs(values["val/loss"] - expected_loss) < 1e-5
    assert logged == {**values, "epoch": logged["epoch"]}  # the epoch, counted from 1, goes with them
    # reset after the epoch: the next epoch starts from scratch
    assert module.metrics["val_"]["acc"].update_count == 0
