"""Where logits become metrics: epoch-level torchmetrics and confusion-matrix figures."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

METRIC_NAMES = ("acc", "precision", "recall", "f1")


def classification_metrics(num_classes: int) -> MetricCollection:
    """Accuracy (share of clips right) and macro precision, recall and F1, accumulated over an epoch.

    Without torchmetrics' argument checks: they read the labels back on the host at every update
    (a GPU sync), and the labels come from our own tables, checked when they are read.
    """
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False),
            "precision": MulticlassPrecision(num_classes, average="macro", validate_args=False),
            "recall": MulticlassRecall(num_classes, average="macro", validate_args=False),
            "f1": MulticlassF1Score(num_classes, average="macro", validate_args=False),
        }
    )


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    """Row-normalised confusion matrix (true class down, predicted across) with class names."""
    matrix = np.asarray(matrix, dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    n = len(class_names)
    size = max(6.0, 0.22 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.92), dpi=100)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=class_names, rotation=90, fontsize=7 if n > 20 else 9)
    ax.set_yticks(range(n), labels=class_names, fontsize=7 if n > 20 else 9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="share of the true class")
    fig.tight_layout()
    return fig
