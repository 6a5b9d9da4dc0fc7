"""Extending from outside the package (docs/extending.md): a model is a class plus one YAML, a
dataset one YAML, a tracker one YAML; nothing inside the package changes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import torch
from helpers import TINY, command_env, run_command, run_dirs

NETS = '''
import torch
from torch import nn

from esc50_lightning.models.blocks import ClassifierHead, ConvBNReLU


class TinyNet(nn.Module):
    """Two conv layers and the project's pooling head."""

    def __init__(self, num_classes: int = 50, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(ConvBNReLU(1, width), nn.MaxPool2d(2), ConvBNReLU(width, width))
        self.head = ClassifierHead(width, num_classes, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
'''

YAMLS = {
    # a model: the class above, by its import path
    "model/tiny.yaml": "name: tiny\nnet:\n  _target_: tiny_nets.TinyNet\n  width: 8\n",
    # a dataset: ESC-50's folder and columns, keeping the animal classes (targets 0-9) only
    "data/animals.yaml": (
        "defaults:\n  - esc50\n  - _self_\ndataset:\n  name: animals\n  csv: animals.csv\n  num_classes: 10\n"
    ),
    # a tracker: Lightning's CSV logger under a name of the user's
    "logger/mine.yaml": (
        "mine:\n  _target_: lightning.pytorch.loggers.CSVLogger\n  save_dir: ${paths.output_dir}\n"
        "  name: my_tracker\n  version: ''\n"
    ),
}


def test_a_model_dataset_and_tracker_from_outside_the_package(esc50_root: Path, cache_dir: Path, tmp_path):
    code, conf = tmp_path / "code", tmp_path / "conf"
    code.mkdir()
    (code / "tiny_nets.py").write_text(NETS)
    for name, text in YAMLS.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(text)
    # the dataset's CSV beside ESC-50's own layout: the audio folder is ESC-50's (a symlink)
    data = tmp_path / "animals"
    data.mkdir()
    (data / "audio").symlink_to(esc50_root / "audio")
    frame = pd.read_csv(esc50_root / "meta" / "esc50.csv")
    frame[frame.target < 10].to_csv(data / "animals.csv", index=False)

    env = {
        **command_env(esc50_root, tmp_path, cache=cache_dir),
        "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]),
    }
    args = ["train.py", "--config-dir", str(conf), TINY, "model=tiny", "data=animals", "logger=mine"]
    proc = run_command([*args, f"data.root={data}"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = run_dirs(tmp_path / "outputs")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "tiny" and metrics["dataset"] == "animals"
    assert len(metrics["class_names"]) == 10 and "dog" in metrics["class_names"]
    logged = pd.read_csv(run / "my_tracker" / "metrics.csv")
    assert "val/acc" in logged.columns and logged["epoch"].dropna().min() >= 1

    # the checkpoint names the class by its module: it loads once the user trusts that module
    last = run / "checkpoints" / "last.ckpt"
    record = torch.load(last, map_location="cpu", weights_only=True)["esc50"]
    assert record["net"] == {"class": "tiny_nets:TinyNet", "kwargs": {"width": 8}}
    clip = esc50_root / "audio" / "1-100032-A-0.wav"
    predict = ["-m", "esc50_lightning.predict", "--ckpt", str(last), str(clip), "--json"]
    refused = run_command(predict, env=env)
    assert refused.returncode == 2 and "ESC50_TRUSTED_MODULES=tiny_nets" in refused.stderr, refused.stderr
    trusted = run_command(predict, env={**env, "ESC50_TRUSTED_MODULES": "tiny_nets"})
    assert trusted.returncode == 0, trusted.stderr
    (result,) = json.loads(trusted.stdout)["results"]
    assert {row["class"] for row in result["top"]} <= set(metrics["class_names"]), result
