"""Is the framework slower than a bare PyTorch loop doing the same work?

``python -m benchmarks.loop [--epochs N] [overrides ...]`` trains the recipe the
overrides name (e.g. ``experiment=vgg8_mixup``) on folds 2-5 with validation on fold 1 twice:

1. **framework**: exactly what ``python train.py`` runs (Lightning Trainer, DataModule, Rich
   progress bar, TensorBoard, checkpoints every epoch, callbacks), in a temporary run folder;
2. **bare loop**: a hand-written loop over the same cached log-mels in memory, with the same
   model, optimiser, schedule, precision, memory format, mixup, label smoothing, crop,
   SpecAugment (torchaudio's masking transforms) and EMA, validating every epoch.

Each side runs in a fresh Python process, so neither inherits the other's warmed-up heap, caches
or thread pools (in one shared process, whichever side ran first was measured ~15 % slower). With
``--rounds 2`` (the default) the order is bare, framework, framework, bare, which also cancels a
steady drift in the machine's speed. It prints the seconds per epoch (train + validation; median
over the epochs after the first, which pays for warm-up; then the mean over rounds) of each and
their ratio. Nothing is asserted: it is a report. Run it on a quiet machine; the load average is
printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchaudio
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch.optim.swa_utils import AveragedModel

from esc50_lightning.errors import CommandLineParser, UserError, run_guarded
from esc50_lightning.factory import build_features, build_logmel
from esc50_lightning.training.precision import use_native_precision
from esc50_lightning.training.schedules import steps_per_batch

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the project's top-level configs

TARGET = 1.05  # the framework may cost at most 5 % more time per epoch than the bare loop


class EpochTimer(L.Callback):
    """Appends the time at the start of the first training epoch and at the end of every one to ``path``.

    Validation runs before ``on_train_epoch_end`` and the checkpoint callbacks run after it, so
    every epoch but the first spans one checkpoint save, one training pass and one validation;
    what ``fit`` does after the last epoch (plots, the EMA swap, teardown) is in none.
    """

    def __init__(self, path: str):
        self.path = Path(path)

    def _mark(self) -> None:
        with self.path.open("a") as f:
            f.write(f"{time.perf_counter()}\n")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.path.exists():
            self._mark()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark()


def bench_config(overrides: list[str], epochs: int, run_dir: Path) -> DictConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"trainer.max_epochs={epochs}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.log_dir = str(run_dir.parent)
        cfg.callbacks.epoch_timer = {
            "_target_": f"{__name__}.EpochTimer",
            "path": str(run_dir / "epoch_times.txt"),
        }
    # The bare loop must run at the precision train.py will actually use on this machine.
    use_native_precision(cfg, on_cpu=not torch.cuda.is_available())
    return cfg


def epoch_seconds(marks: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(marks)]


def run_framework(cfg: DictConfig) -> list[float]:
    from esc50_lightning.tasks.train import train  # what `python train.py` calls

    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train(cfg)
    marks = [float(line) for line in (run_dir / "epoch_times.txt").read_text().split()]
    return epoch_seconds(marks)


# ---- the bare loop ---------------------------------------------------------------------------
def standardise(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2), keepdim=True)
    std = x.std(dim=(1, 2), keepdim=True)
    return (x - mean) / (std + 1e-5)


def random_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    freq, time_ = x.shape[1:]
    off_f = torch.randint(0, freq - size[0] + 1, (x.shape[0],)).tolist()
    off_t = torch.randint(0, time_ - size[1] + 1, (x.shape[0],)).tolist()
    return torch.stack(
        [x[i, f : f + size[0], t : t + size[1]] for i, (f, t) in enumerate(zip(off_f, off_t, strict=True))]
    )


def centre_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    f, t = (x.shape[1] - size[0]) // 2, (x.shape[2] - size[1]) // 2
    return x[:, f : f + size[0], t : t + size[1]]


def run_bare_loop(cfg: DictConfig, epochs: int) -> list[float]:
    L.seed_everything(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm = instantiate(cfg.data, frontend=build_logmel(cfg))
    dm.prepare_data()
    dm.setup("fit")
    # Each split's clips copied into memory, in row order: one gather of every row.
    train, val = (dm.sets[s].__getitems__(list(range(len(dm.sets[s].rows)))) for s in ("train", "val"))
    x_train, y_train = train["x"], train["y"]
    x_val, y_val = val["x"], val["y"]
    frontend = build_features(cfg)  # train.py's crop sizes; the loop below does its own cropping
    size, eval_size = frontend.output_shape, frontend.eval_shape

    chain = cfg.augmentation.get("chain") or {}
    aug = chain.get("spec_augment")
    masks: list[torch.nn.Module] = []
    if aug:
        masks += [
            torchaudio.transforms.FrequencyMasking(aug.freq_mask_width, iid_masks=True)
        ] * aug.freq_masks
        masks += [torchaudio.transforms.TimeMasking(aug.time_mask_width, iid_masks=True)] * aug.time_masks
    mixup_alpha = float(chain.mixup.alpha) if chain.get("mixup") else 0.0  # of the inputs
    smoothing = float(cfg.optim.get("label_smoothing") or 0.0)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    precision = str(cfg.trainer.precision)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision.startswith("bf16") else nullcontext()
    )

    model = instantiate(cfg.model.net, num_classes=dm.num_classes).to(device, memory_format=memory_format)
    optimizer = instantiate(cfg.optim.optimizer)(params=model.parameters())
    batch_size = cfg.data.batch_size
    copies = cfg.data.get("copies_per_epoch", 1) or 1
    steps_per_epoch = -(-len(x_train) * copies // batch_size)
    scheduler, per_step = None, False
    if cfg.optim.get("scheduler"):
        factory = instantiate(cfg.optim.scheduler)
        per_step = steps_per_batch(factory)
        kwargs = {"total_steps": steps_per_epoch * epochs} if per_step else {}
        scheduler = factory(optimizer, **kwargs)
    ema_cfg = (cfg.get("callbacks") or {}).get("ema")
    ema = None
    if ema_cfg:
        ema = AveragedModel(model, multi_avg_fn=instantiate(ema_cfg.multi_avg_fn), use_buffers=True)

    def inputs(x: torch.Tensor, train: bool) -> torch.Tensor:
        x = standardise(x.to(device).float())
        x = (random_crop(x, size) if train else centre_crop(x, eval_size)).unsqueeze(1)
        if train:
            for mask in masks:
                x = mask(x)
        return x.contiguous(memory_format=memory_format)

    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train) * copies) % len(x_train)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x, y = inputs(x_train.index_select(0, idx), train=True), y_train[idx].to(device)
            with autocast:
                if mixup_alpha > 0:
                    lam = float(torch.distributions.Beta(mixup_alpha, mixup_alpha).sample())
                    perm = torch.randperm(len(idx), device=device)
                    logits = model(lam * x + (1 - lam) * x[perm]).float()
                    loss = lam * F.cross_entropy(logits, y, label_smoothing=smoothing) + (
                        1 - lam
                    ) * F.cross_entropy(logits, y[perm], label_smoothing=smoothing)
                else:
                    loss = F.cross_entropy(model(x).float(), y, label_smoothing=smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if per_step:
                scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
        if scheduler is not None and not per_step:
            scheduler.step()
        evaluated = ema if ema is not None else model
        evaluated.eval()
        correct = 0
        with torch.no_grad(), autocast:
            for i in range(0, len(x_val), cfg.data.eval_batch_size):
                x = inputs(x_val[i : i + cfg.data.eval_batch_size], train=False)
                pred = evaluated(x).argmax(1).cpu()
                correct += int((pred == y_val[i : i + cfg.data.eval_batch_size]).sum())
        times.append(time.perf_counter() - start)
        print(f"bare loop: epoch {len(times)}: {times[-1]:.1f} s, val acc {correct / len(x_val):.3f}")
    return times


def summary(seconds: list[float]) -> float:
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def side_order(rounds: int) -> list[str]:
    """Bare, framework, then the reverse, and so on: ABBA cancels a linear drift in speed."""
    pair = ["bare", "framework"]
    return [side for r in range(rounds) for side in (pair if r % 2 == 0 else pair[::-1])]


def run_side(side: str, epochs: int, overrides: list[str]) -> list[float]:
    """One side in a fresh process; returns its seconds per epoch."""
    with tempfile.TemporaryDirectory(prefix="esc50-bench-loop-") as tmp:
        out = Path(tmp) / "side.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.loop",
            "--side",
            side,
            "--epochs",
            str(epochs),
            "--json",
            str(out),
        ]
        sys.stdout.flush()
        proc = subprocess.run([*cmd, *overrides], check=False)  # its output goes straight to ours
        if proc.returncode != 0 or not out.is_file():
            raise UserError(f"the {side} side of the benchmark failed (exit {proc.returncode}); see above")
        return json.loads(out.read_text())["epochs_s"]


def _one_side(side: str, overrides: list[str], epochs: int) -> list[float]:
    tmp = Path(tempfile.mkdtemp(prefix="esc50-bench-loop-"))
    try:
        cfg = bench_config(overrides, epochs, tmp / "run")
        return run_framework(cfg) if side == "framework" else run_bare_loop(cfg, epochs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def render(results: dict[str, Any]) -> str:
    fw, bare = results["framework_s"], results["bare_loop_s"]
    ratio = fw / bare
    per_round = lambda key: ", ".join(f"{summary(s):.2f}" for s in results[key])  # noqa: E731
    lines = [
        f"Recipe: {' '.join(results['overrides']) or '(defaults)'}; {results['epochs']} epochs, "
        f"{results['rounds']} round(s) ({' → '.join(results['order'])}, each a fresh process), "
        f"torch threads {torch.get_num_threads()}, load average "
        f"{results['load_start']:.2f} → {results['load_end']:.2f}",
        "",
        "| | s/epoch (train + val) | per run |",
        "|---|---|---|",
        f"| framework (`python train.py`) | {fw:.2f} | {per_round('framework_runs_s')} |",
        f"| bare PyTorch loop | {bare:.2f} | {per_round('bare_loop_runs_s')} |",
        f"| ratio | {ratio:.3f}× | |",
        "",
        f"Target: framework ≤ {TARGET:.2f}× the bare loop: {'met' if ratio <= TARGET else 'NOT met'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = CommandLineParser(
        prog="python -m benchmarks.loop",
        description="Seconds per epoch of python train.py against a bare PyTorch loop on the same work.",
    )
    parser.add_argument("--epochs", type=int, default=4, help="epochs each (the first is not counted)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, in ABBA order")
    parser.add_argument("--json", help="also write the raw figures to this file")
    parser.add_argument("--side", choices=["framework", "bare"], help=argparse.SUPPRESS)  # child process
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=vgg8_mixup")
    args = parser.parse_args(argv)

    def run() -> None:
        if args.epochs < 2:
            raise UserError(f"--epochs {args.epochs}: give at least 2 (the first epoch is not counted)")
        if args.side:
            epochs_s = _one_side(args.side, args.overrides, args.epochs)
            Path(args.json).write_text(json.dumps({"epochs_s": epochs_s}) + "\n")
            return
        if args.rounds < 1:
            raise UserError(f"--rounds {args.rounds}: give at least 1")
        load_start = os.getloadavg()[0]
        order = side_order(args.rounds)
        runs: dict[str, list[list[float]]] = {"framework": [], "bare": []}
        for side in order:
            runs[side].append(run_side(side, args.epochs, args.overrides))
        results = {
            "overrides": args.overrides,
            "epochs": args.epochs,
            "rounds": args.rounds,
            "order": order,
            "framework_runs_s": runs["framework"],
            "bare_loop_runs_s": runs["bare"],
            "framework_s": statistics.mean(summary(s) for s in runs["framework"]),
            "bare_loop_s": statistics.mean(summary(s) for s in runs["bare"]),
            "load_start": load_start,
            "load_end": os.getloadavg()[0],
        }
        print(render(results), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

    run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
