"""A user's own augmentation, from outside the package: a class in the user's module on PYTHONPATH
plus one YAML in the user's config folder (``--config-dir``), trained with ``train.py debug=tiny``
on real clips."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import command_env, hydra_args, run_command, run_dirs

from esc50_lightning.checkpoints.record import read_checkpoint

MODULE = '''
from pathlib import Path

import torch

from esc50_lightning.features import Augmentation


class MarkedNoise(Augmentation):
    """Adds noise to whole-clip log-mels and writes a line per call to a marker file."""

    acts_on = "logmel"

    def __init__(self, marker: str, db: float = 1.0):
        super().__init__()
        self.marker, self.db = Path(marker), db

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        with self.marker.open("a") as out:
            out.write(f"{tuple(x.shape)} {self.training}\\n")
        return x + self.db * torch.randn_like(x)
'''


def test_a_user_augmentation_is_a_module_and_one_yaml(
    esc50_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    code, conf, marker = tmp_path / "code", tmp_path / "conf" / "augmentation", tmp_path / "calls.txt"
    code.mkdir()
    conf.mkdir(parents=True)
    (code / "my_augmentations.py").write_text(MODULE)
    (conf / "noisy.yaml").write_text(
        "defaults:\n  - specaugment\n  - _self_\n"
        f"chain:\n  noise:\n    _target_: my_augmentations.MarkedNoise\n    marker: {marker}\n    db: 2.0\n"
    )
    path = os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH")) if p)
    env = command_env(esc50_root, tmp_path, cache=cache_dir, PYTHONPATH=path)
    args = hydra_args("train.py", f"--config-dir={tmp_path / 'conf'}", "augmentation=noisy", "model=cnn4")
    run_command(args, env=env, timeout=900, check=True)

    # Training steps only (none in validation or test): 200 clips of folds 2-5 in batches of 25.
    calls = marker.read_text().splitlines()
    assert calls == ["(25, 128, 431) True"] * 8, calls
    (run,) = run_dirs(tmp_path / "outputs")
    assert (run / "metrics.json").is_file(), "training did not finish"
    # checkpoints hold no augmentation: the model rebuilds from them without the user's module
    state = read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert not [k for k in state if "chain" in k]
