"""Which folds train, validate and test under each evaluation protocol."""

from __future__ import annotations

from collections.abc import Sequence

from esc50_lightning.errors import UserError

PROTOCOLS = ("cv", "holdout")


def fold_splits(folds: Sequence[int], fold: int, protocol: str = "cv") -> dict[str, list[int]]:
    """Which folds train, validate and test.

    ``cv``: the other folds train, ``fold`` is both validation and the reported evaluation fold.
    ``holdout``: ``fold`` is the test fold, the fold before it (wrapping) validates, the rest train.
    """
    folds = sorted(int(f) for f in folds)
    if protocol not in PROTOCOLS:
        raise UserError(f"data.protocol={protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if fold not in folds:
        raise UserError(f"data.fold={fold} is not one of the dataset's folds {folds[0]}-{folds[-1]}")
    if protocol == "cv":
        if len(folds) < 2:
            raise UserError("cross-validation needs at least 2 folds")
        return {"train": [f for f in folds if f != fold], "val": [fold], "test": [fold]}
    if len(folds) < 3:
        raise UserError("the holdout protocol needs at least 3 folds")
    val = folds[(folds.index(fold) - 1) % len(folds)]
    return {"train": [f for f in folds if f not in (fold, val)], "val": [val], "test": [fold]}
