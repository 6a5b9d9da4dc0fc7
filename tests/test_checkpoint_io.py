"""A checkpoint write that dies half-way leaves the previous checkpoint intact and no debris."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esc50_lightning.checkpoints import io as checkpoint_io
from esc50_lightning.checkpoints.io import AtomicCheckpointIO


def test_interrupted_save_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, path)
    real_save = torch.save

    def dying_save(obj, handle, *args, **kwargs) -> None:
        handle.write(b"PK\x03\x04 partial bytes of a zip")  # what a killed torch.save leaves
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(checkpoint_io.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.setattr(checkpoint_io.torch, "save", real_save)

    assert io.load_checkpoint(path, weights_only=False)["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]

    io.save_checkpoint({"epoch": 3, "w": torch.zeros(1000)}, path)
    assert io.load_checkpoint(path, weights_only=False)["epoch"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
