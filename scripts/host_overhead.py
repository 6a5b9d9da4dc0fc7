"""How long the host takes to issue one training step, with the arithmetic made negligible.

A GPU is kept busy only if the CPU queues each step's kernels faster than the GPU runs them.
This times the whole step of a recipe (frontend, forward, loss, backward, optimiser, EMA when the
recipe has one) on one CPU thread with 2-channel layers, 2 clips and 30-frame crops: the same
operations as the real step, each on almost no data, so the time is the per-operation cost of
Python, the dispatcher and the kernels' fixed overhead. A GPU adds a launch of a few µs per kernel.

    python scripts/host_overhead.py experiment=long_schedule model=cnn8

Compare the result with the GPU time of a step: at 20k samples/s a batch of 256 takes 12.8 ms.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.optim.swa_utils import AveragedModel
from torch.profiler import ProfilerActivity, profile

from esc50_lightning.factory import build_module
from esc50_lightning.training.ema import count_on_host

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the project's top-level configs


def measure(choice: str, steps: int = 50) -> tuple[float, int]:
    """Milliseconds per step and the number of top-level aten operations in one step."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[choice, "model.net.channels=[2,2,2,2]"])
    module = build_module(cfg, [f"c{i}" for i in range(50)]).train()
    features = module.features
    mels = features.input_shape[0]
    features.input_shape, features.crop = (mels, 40), (features.output_shape[0], 30)  # tiny crops
    optimizer = module.optimizer_factory(params=module.parameters())
    ema = None
    if cfg.get("callbacks") and cfg.callbacks.get("ema"):
        multi_avg_fn = instantiate(cfg.callbacks.ema.multi_avg_fn)
        ema = count_on_host(AveragedModel(module, multi_avg_fn=multi_avg_fn, use_buffers=True))
        ema.update_parameters(module)
    batch = {"x": torch.randn(2, mels, 40), "y": torch.zeros(2, dtype=torch.long), "row": torch.zeros(2)}

    def step(index: int) -> None:
        inputs = module.on_after_batch_transfer(batch, 0)
        module.training_step(inputs, index).backward()
        optimizer.step()
        optimizer.zero_grad()
        if ema is not None:
            ema.update_parameters(module)
        module._train_steps.clear()

    for index in range(5):  # warm-up
        step(index)
    start = time.perf_counter()
    for index in range(steps):
        step(index)
    seconds = (time.perf_counter() - start) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(0)
    ops = sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)
    return seconds * 1e3, ops


def main() -> None:
    torch.set_num_threads(1)
    choices = sys.argv[1:] or ["experiment=long_schedule", "model=cnn8"]
    print("| recipe or model | host ms per step | top-level aten ops per step |")
    print("|---|---:|---:|")
    for choice in choices:
        ms, ops = measure(choice)
        print(f"| `{choice}` | {ms:.2f} | {ops} |", flush=True)


if __name__ == "__main__":
    main()
