"""Today's training path against the fast path (``speed=gpu_fast``), side by side in one run.

``python -m benchmarks.fastpath`` trains each model (default cnn8 and vgg8), or recipe
(``--models experiment=long_schedule``: its model, frontend and augmentation), for a few steps each
way and prints one Markdown table:

- **today**: the DataLoader over the mapped cache, batch 32, copied to the device per step, fp32;
- **resident**: today's batch and precision, the batches gathered from the cache on the device
  (``data.device_resident`` alone: what the data path is worth);
- **fast**: the cache resident on the device (``data.device_resident``), batches gathered there,
  batch 256, bf16 autocast (fp32 on a CPU without bf16 instructions), channels_last, and
  ``torch.compile`` on a GPU (``--compile``/``--no-compile``);
- **fp32** and **default** (``--paths fp32,default``): the recipe as ``train.py`` runs it (the
  DataLoader, today's batch, the recipe's channels_last), forced to ``32-true``, and at its default
  precision (``trainer.precision=auto`` resolved for this machine, as ``train.py`` resolves it); a
  line under the table gives the default's speed over float32's.

Both run the same frontend (``AudioClassifier.on_after_batch_transfer``: crop, SpecAugment) and
the same forward, loss, backward and Adam update, without Lightning's per-step hooks (whose
cost ``python -m benchmarks.loop`` measures). Per row: samples/s, the time of one
training epoch (measured on a GPU, after a warm-up epoch that also compiles; derived from
samples/s on a CPU), FLOPs per sample (``FlopCounterMode`` on one eager step) and the achieved
TFLOP/s against the GPU's bf16 dense peak (a table by device name, or ``--peak-tflops``), the
GPU's busy share (kernel time over wall time under ``torch.profiler``, GPU only) and the data
share (gathering + frontend alone, over the time of whole steps). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.optim.swa_utils import AveragedModel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.pipeline import bench_device, cycle, machine_info, prepare, timed_call, to_device
from esc50_lightning.errors import CommandLineParser, UserError, run_guarded
from esc50_lightning.factory import build_logmel, build_module
from esc50_lightning.training.ema import count_on_host
from esc50_lightning.training.precision import (
    CPU_BF16_COMPILE,
    FLOAT32,
    cpu_has_native_bf16,
    use_native_precision,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the project's top-level configs

MODELS = ("cnn8", "vgg8")
# bf16 dense tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name (first match).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """The device's bf16 dense peak: ``override``, else the table's; None on a CPU or unknown GPU."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


# ---- the paths ------------------------------------------------------------------------------------
PATHS = ("today", "resident", "fast", "fp32", "default")
DEFAULT_PATHS = ("today", "resident", "fast")
# The recipe as train.py runs it, at float32 and at its default precision: the precision's ratio.
PRECISION_PATHS = ("fp32", "default")


def path_config(args: argparse.Namespace, model: str, fast: bool, precision: str | None = None) -> DictConfig:
    """``model`` is a model name, or ``experiment=NAME``: a recipe's model, features and augmentation;
    ``precision``: a ``trainer.precision`` override (else the config's, ``auto`` by default)."""
    overrides = [
        f"data.dataset.root={args.root}",
        model if model.startswith("experiment=") else f"model={model}",
        f"data.batch_size={args.fast_batch_size if fast else args.batch_size}",
        "data.num_workers=0",
    ]
    if precision:
        overrides.append(f"trainer.precision={precision}")
    if args.cache_dir:
        overrides.append(f"data.cache_dir={args.cache_dir}")
    if args.limit_per_class:
        overrides.append(f"data.limit_per_class={args.limit_per_class}")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def fast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where it runs natively (GPUs, CPUs with bf16 instructions); else None (fp32)."""
    if device.type == "cpu" and cpu_has_native_bf16() is False:
        return None
    return torch.bfloat16


class TrainPath:
    """One way of training: its batches, its module and its train step."""

    def __init__(self, args: argparse.Namespace, model: str, kind: str, device: torch.device, dm: Any):
        fast = kind == "fast"
        self.fast, self.resident, self.device = fast, kind in ("resident", "fast"), device
        cfg = path_config(args, model, fast, precision=FLOAT32 if kind == "fp32" else None)
        self.trainer_precision: str | None = None
        if kind in PRECISION_PATHS:  # the recipe's own channels_last; its precision as train.py resolves it
            use_native_precision(cfg, on_cpu=device.type == "cpu")
            self.trainer_precision = str(cfg.trainer.precision)
            self.dtype = torch.bfloat16 if self.trainer_precision.startswith("bf16") else None
        else:
            cfg.channels_last = fast
            self.dtype = fast_dtype(device) if fast else None
        self.channels_last = bool(cfg.channels_last)
        self.batch_size = int(cfg.data.batch_size)
        wanted = args.compile if args.compile is not None else device.type == "cuda"
        self.compile = fast and wanted
        self.module = build_module(cfg, dm.class_names, build_logmel(cfg)).to(device).train()
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=3e-4)
        # A recipe with callbacks=ema updates its average after every step: so does its path here.
        self.ema: AveragedModel | None = None
        if cfg.get("callbacks") and cfg.callbacks.get("ema"):
            multi_avg_fn = instantiate(cfg.callbacks.ema.multi_avg_fn)
            self.ema = count_on_host(AveragedModel(self.module, multi_avg_fn=multi_avg_fn, use_buffers=True))
        self.dm = dm
        dm.batch_size = self.batch_size
        self._batches = cycle(self)

    @property
    def precision(self) -> str:
        parts = ["bf16" if self.dtype == torch.bfloat16 else "fp32"]
        parts += ["channels_last"] * self.channels_last + ["compile"] * self.compile
        return "+".join(parts)

    def loader(self) -> Any:
        if self.resident:
            return self.dm.device_loader("train", self.device)
        return self.dm.train_dataloader()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.loader())  # a fresh epoch each time: cycle() goes on over epochs

    def data(self, batch: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """The next batch on the device through the frontend (what Lightning does before a step)."""
        batch = next(self._batches) if batch is None else batch
        if not self.resident:
            batch = to_device(batch, self.device)
        with torch.no_grad():
            return self.module.on_after_batch_transfer(batch, 0)

    def step(self, batch: dict[str, Any]) -> int:
        autocast = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()
        with autocast:
            loss = self.module.training_step(batch, 0)
        self.last_loss = loss.detach()  # read once, after the timings: a NaN shows in the table
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.module)
        return int(batch["y"].shape[0])

    def flops_per_sample(self) -> float:
        """FLOPs of one eager train step (forward + backward) per sample; before compiling."""
        batch = self.data()
        with FlopCounterMode(display=False) as counter:
            self.step(batch)
        return counter.get_total_flops() / batch["y"].shape[0]

    def compile_now(self) -> None:
        if self.compile:
            self.module.compile = True
            self.module.configure_model()


def busy_share(path: TrainPath, steps: int) -> float | None:
    """Share of wall time the GPU runs kernels (merged kernel intervals) over ``steps`` steps."""
    if path.device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            wall, _ = timed_call(lambda: sum(path.step(path.data()) for _ in range(steps)), path.device)
        spans = sorted(
            (e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA
        )
        busy, end = 0.0, float("-inf")
        for start, stop in spans:  # union: kernels on several streams may overlap
            if stop > end:
                busy += stop - max(start, end)
                end = stop
        return min(1.0, busy / 1e6 / wall) if spans else None
    except Exception as err:  # a profiler problem must not lose the other figures
        print(f"busy share not measured: {err}", file=sys.stderr)
        return None


def host_syncs(path: TrainPath, steps: int = 3) -> float | None:
    """Host syncs per train step (CUDA's sync debug mode counts them; GPU only). Each one makes
    the CPU wait for the GPU, which then idles while the CPU queues the next kernels."""
    if path.device.type != "cuda":
        return None
    torch.cuda.synchronize(path.device)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(steps):
                path.step(path.data())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def measure(path: TrainPath, args: argparse.Namespace, train_clips: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "batch": path.batch_size,
        "precision": path.precision,
        "trainer_precision": path.trainer_precision,
        "flops_per_sample": path.flops_per_sample(),
    }
    path.compile_now()
    device = path.device
    measure_epoch = args.epoch if args.epoch is not None else device.type == "cuda"
    if measure_epoch:  # a warm-up epoch compiles every batch shape (the last batch is shorter)
        for batch in path.loader():
            path.step(path.data(batch))
        epoch_s, _ = timed_call(lambda: sum(path.step(path.data(b)) for b in path.loader()), device)
    for _ in range(args.warmup):
        path.step(path.data())
    rates, data_s, step_s = [], [], []
    for _ in range(args.repeats):
        seconds, n = timed_call(lambda: sum(path.step(path.data()) for _ in range(args.steps)), device)
        rates.append(n / seconds)
        step_s.append(seconds / args.steps)
        seconds, _ = timed_call(lambda: sum(len(path.data()["y"]) for _ in range(args.steps)), device)
        data_s.append(seconds / args.steps)
    result["samples_per_s"] = statistics.median(rates)
    result["data_share"] = min(1.0, statistics.median(data_s) / statistics.median(step_s))
    result["epoch_s"] = epoch_s if measure_epoch else train_clips / result["samples_per_s"]
    result["epoch_measured"] = measure_epoch
    result["busy_share"] = busy_share(path, args.steps)
    result["host_syncs_per_step"] = host_syncs(path)
    result["last_loss"] = float(path.last_loss)
    return result


# ---- report ---------------------------------------------------------------------------------------
def precision_ratios(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model or recipe with both precision paths: its default precision and its speed over float32's."""
    ratios = {}
    for model, paths in results["models"].items():
        if "fp32" in paths and "default" in paths:
            fp32, default = paths["fp32"], paths["default"]
            ratios[model] = {
                "default": default["trainer_precision"],
                "ratio": default["samples_per_s"] / fp32["samples_per_s"],
                "fp32_samples_per_s": fp32["samples_per_s"],
                "default_samples_per_s": default["samples_per_s"],
            }
    return ratios


def render(results: dict[str, Any]) -> str:
    m, peak = results["machine"], results["peak_tflops"]
    base = results["paths"][0]  # the ratio column's reference: today by default
    fast = "fast" in results["paths"]
    lines = [
        "## Today's path against the fast path (speed=gpu_fast)"
        if fast
        else "## Training paths side by side",
        "",
        f"- device {m['device']}; GPU: {m['gpu'] or 'none'}; CPU: {m['cpu']}, {m['cores']} cores, "
        f"{m['torch_threads']} torch threads; torch {m['torch']}",
        f"- {results['clips']} clips, {results['train_clips']} in a training epoch; {results['steps']} timed "
        f"steps per figure, median of {results['repeats']}; load average {m['load_average_start']} at start, "
        f"{m['load_average_end']} at end",
        f"- peak: {f'{peak:g} TFLOP/s bf16 dense' if peak else 'n/a'}",
        "- paths: today = DataLoader, host-to-device copy per step; resident = data.device_resident, "
        "today's batch and precision; fast = speed=gpu_fast (resident, large batch, bf16 where native, "
        "channels_last, compile on a GPU); fp32 / default = the recipe as train.py runs it (DataLoader, "
        "today's batch, its channels_last) at 32-true / at trainer.precision=auto resolved for this machine",
        "",
        f"| model | path | batch | precision | samples/s | × {base} | epoch s | GFLOP/sample | TFLOP/s "
        "| % of peak | GPU busy | data share | syncs/step | last loss |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, paths in results["models"].items():
        reference = paths[base]["samples_per_s"]
        for name, r in paths.items():
            tflops = r["flops_per_sample"] * r["samples_per_s"] / 1e12
            epoch = f"{r['epoch_s']:.2f}" + ("" if r["epoch_measured"] else " (derived)")
            busy = "n/a" if r["busy_share"] is None else f"{100 * r['busy_share']:.1f} %"
            syncs = r.get("host_syncs_per_step")
            lines.append(
                f"| {model} | {name} | {r['batch']} | {r['precision']} | {r['samples_per_s']:,.1f} "
                f"| {r['samples_per_s'] / reference:.2f}× | {epoch} | {r['flops_per_sample'] / 1e9:.2f} "
                f"| {tflops:.3f} | {f'{100 * tflops / peak:.2f} %' if peak else 'n/a'} | {busy} "
                f"| {100 * r['data_share']:.1f} % | {'n/a' if syncs is None else f'{syncs:g}'} "
                f"| {r['last_loss']:.3f} |"
            )
    lines += [
        "",
        "samples/s: whole train steps (next batch, frontend, forward, loss, backward, Adam). Epoch: one pass "
        "over the training clips (derived = clips / samples/s). TFLOP/s: FLOPs of one eager step "
        "(FlopCounterMode) × steps/s. GPU busy: kernel time / wall time under torch.profiler. Data share: "
        "the batch and frontend alone / a whole step. Syncs/step: host reads of GPU tensors per step (CUDA's "
        "sync debug mode), each a wait for the GPU. A recipe with an EMA updates it after every step. Last "
        "loss: the loss of the last step measured (nan: this path does not train).",
    ]
    if results.get("resident_gb") is not None:
        lines.append(f"Device-resident data: {results['resident_gb']:.2f} GB on {m['device']}.")
    if ratios := results.get("precision_ratios"):
        lines += ["", "Default precision against float32 (the same path and batch, side by side):"]
        for model, r in ratios.items():
            lines.append(
                f"- {model}: {r['default']} {r['ratio']:.2f}× float32's samples/s "
                f"({r['fp32_samples_per_s']:,.1f} → {r['default_samples_per_s']:,.1f})"
            )
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    device = bench_device(args)
    models = args.models.split(",")
    results: dict[str, Any] = {"machine": machine_info(device), "steps": args.steps, "repeats": args.repeats}
    results["paths"] = args.paths.split(",")
    results["peak_tflops"] = peak_tflops(device, args.peak_tflops)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    results["models"] = {}
    for model in models:
        cfg = path_config(args, model, fast=False)  # a recipe may bring its own frontend: its own cache
        dm = instantiate(cfg.data, frontend=build_logmel(cfg))
        dm.prepare_data()
        dm.setup("fit")
        results["clips"], results["train_clips"] = len(dm.table), len(dm.sets["train"])
        results["models"][model] = {}
        for name in results["paths"]:
            log(f"{model}: {name} path ...")
            torch.manual_seed(0)
            path = TrainPath(args, model, name, device, dm)
            results["models"][model][name] = measure(path, args, results["train_clips"])
            del path
            if device.type == "cuda":
                torch.cuda.empty_cache()
    results["precision_ratios"] = precision_ratios(results)
    if any(name in ("resident", "fast") for name in results["paths"]):
        inputs = dm.resident_arrays(device)[0]
        results["resident_gb"] = inputs.numel() * inputs.element_size() / 1e9
    results["machine"]["load_average_end"] = round(os.getloadavg()[0], 2)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="python -m benchmarks.fastpath",
        description="Today's training path against speed=gpu_fast's, side by side, on the real ESC-50 clips.",
    )
    parser.add_argument("--root", default=os.environ.get("ESC50_ROOT"), help="ESC-50 folder ($ESC50_ROOT)")
    parser.add_argument("--cache-dir", help="data cache (default: the configured one, $ESC50_CACHE)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated models, or recipes as experiment=NAME (default: cnn8,vgg8)",
    )
    parser.add_argument(
        "--paths",
        default=",".join(DEFAULT_PATHS),
        help="comma-separated paths, in this order (the first is the ratio column's reference): today, "
        "resident, fast, fp32, default (fp32,default: the recipe at float32 and at its default precision; "
        "default: today,resident,fast)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="today's batch (default 32)")
    parser.add_argument(
        "--fast-batch-size", type=int, default=256, help="the fast path's batch (default 256)"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per figure (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="figures per row, the median kept (default 3)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the fast path (default: on a GPU only)",
    )
    parser.add_argument(
        "--epoch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time a whole training epoch after a warm-up one (default: on a GPU only; else derived)",
    )
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s (default: by GPU name)")
    parser.add_argument("--limit-per-class", type=int, help="clips per class and fold (smoke tests)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--json", help="also write the raw figures to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def go() -> None:
        prepare(args)
        for name in args.models.split(","):
            if name.startswith("experiment="):
                recipe = name.split("=", 1)[1]
                if not (CONF_DIR / "experiment" / f"{recipe}.yaml").is_file() or recipe == "cnn14_finetune":
                    known = sorted(
                        p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if "cnn14" not in p.stem
                    )
                    raise UserError(f"--models: unknown recipe {name!r}; recipes: {', '.join(known)}")
            elif not (CONF_DIR / "model" / f"{name}.yaml").is_file() or name == "cnn14":
                raise UserError(
                    f"--models: unknown model {name!r}; choose from cnn4, cnn8, vgg8, resnet18, "
                    "or a recipe as experiment=NAME"
                )
        paths = args.paths.split(",")
        if any(p not in PATHS for p in paths) or len(set(paths)) < len(paths):
            raise UserError(f"--paths {args.paths}: choose from {', '.join(PATHS)}, each at most once")
        if min(args.steps, args.repeats, args.batch_size, args.fast_batch_size) < 1 or args.warmup < 0:
            raise UserError("--steps, --repeats and the batch sizes must be positive, --warmup 0 or more")
        device = bench_device(args)
        if args.compile and device.type == "cpu" and fast_dtype(device) == torch.bfloat16:
            raise UserError(f"--compile on this CPU: the fast path runs bf16 here, and {CPU_BF16_COMPILE}")
        results = run(args)
        print(render(results), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")

    run_guarded(go)


if __name__ == "__main__":
    main()
