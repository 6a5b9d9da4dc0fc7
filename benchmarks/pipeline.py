"""Benchmark the training input pipeline and the train step on the real ESC-50 clips.

``python -m benchmarks`` (quick, a few minutes) or ``--full`` prints Markdown tables:

1. input pipeline samples/s: ours (cache + batched frontend, crop, SpecAugment) against a
   seed-style per-item pipeline (read the file, mel, dB, normalise, crop, masks), side by side;
2. train-step samples/s per model and speed variant (fp32, bf16/fp16 autocast, channels_last),
   without and with the input pipeline, and the share of step time the pipeline takes;
3. cold start (empty cache: decode every clip) and warm start (cache present), to the first
   batch and to the first training step, each in a fresh process, with peak resident memory;
4. the machine: CPU, cores, load average (contention makes timings unreliable), versions, GPU.

Every figure is the median of ``--repeats`` runs. Nothing here is asserted: it is a report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
import torchaudio
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from esc50_lightning.errors import CommandLineParser, UserError, run_guarded
from esc50_lightning.factory import build_logmel, build_module
from esc50_lightning.training.precision import cpu_flags, cpu_has_native_bf16, cpu_model

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the project's top-level configs

BUSY = (
    " — machine busy: timings are noisy, and small multi-threaded ops slow down many times over "
    "when other processes hold the cores (compare --threads 1)"
)
MODELS = ("cnn4", "cnn8", "resnet18")
# Models with a frontend of their own (name -> the overrides that select it), measured on batches
# of that frontend; --models names them explicitly (not in the default set: CNN14 is 80 M
# parameters, and random weights time the same as the published ones).
OWN_FRONTEND = {"cnn14": ["experiment=cnn14_finetune", "model.net.weights=null"]}


# ---- settings --------------------------------------------------------------------------------
@dataclass
class Mode:
    """How much work each measurement does (quick by default, ``--full`` for steadier figures)."""

    seed_items: int  # items through the seed-style pipeline per repeat
    pipeline_batches: int  # batches through our cached log-mel pipeline per repeat
    waveform_batches: int  # batches through the waveform (full frontend) pipeline per repeat
    warmup_steps: int
    timed_steps: int  # train steps timed per variant (the median is reported)
    repeats: int
    variants: list[str] = field(default_factory=list)


def mode_for(args: argparse.Namespace, device: torch.device) -> Mode:
    mode = Mode(256, 50, 20, 3, 10, 5) if args.full else Mode(64, 25, 4, 1, 3, 3)
    if args.repeats:
        mode.repeats = args.repeats
    if args.steps:
        mode.timed_steps = args.steps
    if args.variants:
        mode.variants = args.variants.split(",")
    elif device.type == "cuda":
        mode.variants = ["fp32", "fp32+cl", "bf16", "fp16", "bf16+cl"]
        mode.variants += ["bf16+cl+compile"] if args.compile else []
    else:
        # Without bf16 instructions bf16 is emulated (slow): quick mode then times fp32+cl instead.
        fast = "bf16+cl" if cpu_has_native_bf16() is not False else "fp32+cl"
        base = ["fp32", "fp32+cl", "bf16", "bf16+cl"] if args.full else ["fp32", fast]
        mode.variants = base + (["bf16+cl+compile"] if args.compile else [])
    return mode


# ---- machine ----------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict[str, Any]:
    import lightning

    flags = cpu_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": bool(cpu_has_native_bf16(flags)),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "load_average_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "lightning": lightning.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    return info


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: kB


# ---- config and data -----------------------------------------------------------------------
def bench_config(args: argparse.Namespace, cache_dir: Path, model: str = "cnn4") -> DictConfig:
    overrides = [
        f"data.dataset.root={args.root}",
        f"data.cache_dir={cache_dir}",
        f"data.batch_size={args.batch_size}",
        "data.num_workers=0",
        *OWN_FRONTEND.get(model, [f"model={model}"]),
    ]
    if args.limit_per_class:
        overrides.append(f"data.limit_per_class={args.limit_per_class}")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def datamodule(cfg: DictConfig, cache_features: bool = True) -> Any:
    dm = instantiate(cfg.data, frontend=build_logmel(cfg), cache_features=cache_features)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def cycle(loader: Any) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from loader


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    # What Lightning does: pinned host memory (the DataLoader pins on GPU hosts), non-blocking copy.
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], int], device: torch.device) -> tuple[float, int]:
    """Seconds of one call of ``fn`` (the device synchronised around it) and what it returned."""
    sync(device)
    start = time.perf_counter()
    n = fn()
    sync(device)
    return time.perf_counter() - start, n


def timed(fn: Callable[[], int], device: torch.device) -> float:
    """Samples per second of one call of ``fn`` (which returns how many samples it processed)."""
    seconds, n = timed_call(fn, device)
    return n / seconds


# ---- 1. input pipelines --------------------------------------------------------------------
def seed_style_rate(cfg: DictConfig, paths: list[Path], n_items: int) -> float:
    """The seed's per-item pipeline on one process: read, mel, dB, normalise, crop, masks."""
    lm = cfg.features.logmel
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=lm.sample_rate,
        n_fft=lm.n_fft,
        hop_length=lm.hop_length,
        n_mels=lm.n_mels,
        f_min=lm.f_min,
        f_max=lm.f_max,
        power=2.0,
    )
    to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=lm.top_db)
    sa = cfg.augmentation.chain.spec_augment
    masks = [torchaudio.transforms.FrequencyMasking(sa.freq_mask_width) for _ in range(sa.freq_masks)]
    masks += [torchaudio.transforms.TimeMasking(sa.time_mask_width) for _ in range(sa.time_masks)]
    clip = int(cfg.data.dataset.sample_rate * cfg.data.dataset.clip_seconds)

    def item(path: Path) -> torch.Tensor:
        wave, _ = sf.read(path, dtype="float32", always_2d=True)
        x = torch.from_numpy(wave.mean(axis=1)[:clip])[None]
        spec = to_db(mel(x))
        spec = (spec - spec.mean()) / (spec.std() + 1e-5)
        crop_f = min(100, spec.shape[1])
        crop_t = min(round(0.89 * spec.shape[2]), spec.shape[2])
        f0 = int(torch.randint(0, spec.shape[1] - crop_f + 1, ()))
        t0 = int(torch.randint(0, spec.shape[2] - crop_t + 1, ()))
        spec = spec[:, f0 : f0 + crop_f, t0 : t0 + crop_t]
        for mask in masks:
            spec = mask(spec)
        return spec

    def run() -> int:
        for i in range(n_items):
            item(paths[i % len(paths)])
        return n_items

    return timed(run, torch.device("cpu"))


def pipeline_rate(dm: Any, module: Any, device: torch.device, n_batches: int) -> float:
    """Our pipeline as training runs it: DataLoader batch → device → batched frontend (train mode)."""
    loader = cycle(dm.train_dataloader())
    module.train()

    def run() -> int:
        n = 0
        with torch.no_grad():
            for _ in range(n_batches):
                batch = to_device(next(loader), device)
                out = module.on_after_batch_transfer(batch, 0)
                n += out["x"].shape[0]
        return n

    return timed(run, device)


# ---- 2. train steps --------------------------------------------------------------------------
def autocast_for(variant: str, device: torch.device) -> AbstractContextManager:
    if "bf16" in variant:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if "fp16" in variant:
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def build_variant(cfg: DictConfig, class_names: list[str], variant: str, device: torch.device) -> Any:
    cfg = cfg.copy()
    cfg.channels_last = "+cl" in variant
    cfg.compile = "compile" in variant
    module = build_module(cfg, class_names, build_logmel(cfg)).to(device)
    module.configure_model()  # torch.compile when asked
    return module


def train_step_rates(
    module: Any, variant: str, dm: Any, device: torch.device, mode: Mode
) -> tuple[float, float, int]:
    """Median samples/s of a full train step on a fixed batch, and with the pipeline in the loop."""
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-4)
    scaler = torch.amp.GradScaler(device.type, enabled="fp16" in variant)
    loader = cycle(dm.train_dataloader())
    fixed = module.on_after_batch_transfer(to_device(next(loader), device), 0)

    def step(batch: dict[str, torch.Tensor]) -> int:
        with autocast_for(variant, device):
            loss = module.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return batch["y"].shape[0]

    def with_pipeline() -> int:
        batch = to_device(next(loader), device)
        with torch.no_grad():
            batch = module.on_after_batch_transfer(batch, 0)
        return step(batch)

    for _ in range(mode.warmup_steps):
        step(fixed)
    bare = [timed(lambda: step(fixed), device) for _ in range(mode.timed_steps)]
    full = [timed(with_pipeline, device) for _ in range(mode.timed_steps)]
    return statistics.median(bare), statistics.median(full), fixed["x"].shape[0]


# ---- 3. startup (child process) ------------------------------------------------------------
def startup_child(args: argparse.Namespace) -> None:
    """Run in a fresh process: build/load the caches, first batch, first train step (cnn4)."""
    t_start = time.perf_counter()
    cache = Path(args.startup)
    cfg = bench_config(args, cache)
    dm = instantiate(cfg.data, frontend=build_logmel(cfg))
    dm.prepare_data()
    dm.setup("fit")
    t_setup = time.perf_counter()
    device = bench_device(args)
    module = build_module(cfg, dm.class_names, build_logmel(cfg)).to(device)
    module.train()
    batch = module.on_after_batch_transfer(to_device(next(iter(dm.train_dataloader())), device), 0)
    sync(device)
    t_batch = time.perf_counter()
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-4)
    module.training_step(batch, 0).backward()
    optimizer.step()
    sync(device)
    t_step = time.perf_counter()
    mapped = dm.sets["train"].inputs  # every split indexes this one mapped array
    in_memory = mapped.numel() * mapped.element_size()
    on_disk = sum(p.stat().st_size for p in cache.rglob("*.npy"))
    result = {
        "clips": len(dm.table),
        "setup_s": t_setup - t_start,
        "first_batch_s": t_batch - t_start,
        "first_step_s": t_step - t_start,
        "peak_rss_gb": peak_rss_gb(),
        "cache_memory_gb": in_memory / 1e9,
        "cache_disk_gb": on_disk / 1e9,
    }
    print("BENCH_STARTUP " + json.dumps(result), flush=True)


def run_startup(args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    """One fresh process; wall time from launch (interpreter and imports included)."""
    cmd = [sys.executable, "-m", "benchmarks", "--startup", str(cache), "--root", str(args.root)]
    cmd += ["--batch-size", str(args.batch_size), "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.limit_per_class:
        cmd += ["--limit-per-class", str(args.limit_per_class)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_STARTUP ")]
    if proc.returncode != 0 or not lines:
        raise UserError(f"startup measurement failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    result = json.loads(lines[-1].split(" ", 1)[1])
    result["wall_s"] = wall
    result["imports_s"] = wall - result["first_step_s"]  # interpreter start, imports, Hydra compose
    return result


# ---- report ------------------------------------------------------------------------------------
def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "## esc50-lightning benchmark",
        "",
        f"- mode: {results['mode']} (medians of {results['repeats']} repeats), "
        f"batch {results['batch_size']}, {results['clips']} ESC-50 clips, device {m['device']}",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, "
        f"bf16 instructions: {'yes' if m['cpu_bf16'] else 'no'}, {m['memory_gb']} GB RAM",
        f"- GPU: {m['gpu'] or 'none'}",
        f"- Python {m['python']}, torch {m['torch']}, torchaudio {m['torchaudio']}, "
        f"lightning {m['lightning']}",
        f"- load average (1 min): {m['load_average_start']} at start, {m['load_average_end']} at end "
        f"on {m['cores']} cores{BUSY if m['busy'] else ''}",
        "",
        "### 1. Input pipeline (training mode: crop + SpecAugment)",
        "",
        "| pipeline | samples/s | × seed-style |",
        "|---|---:|---:|",
    ]
    p = results["pipeline"]
    seed = p["seed_style"]
    rows = [
        ("seed-style, per item: read file, mel, dB, normalise, crop, masks (CPU)", seed),
        (f"ours: cached log-mels, batched normalise/crop/SpecAugment ({m['device']})", p["ours"]),
        (
            f"ours, data.cache_features=false: cached waveforms, batched full frontend ({m['device']})",
            p["waves"],
        ),
    ]
    for name, rate in rows:
        if rate is not None:
            lines.append(f"| {name} | {fmt(rate)} | {rate / seed:.1f}× |")
    lines += [
        "",
        f"### 2. Train step, batch {results['batch_size']} ({m['device']})",
        "",
        "Step = forward, loss, backward, Adam update on a ready batch; with pipeline = the same plus "
        "fetching the next batch and running the frontend. Data share = pipeline time / (pipeline + step) "
        "using the isolated pipeline rate above; measured = 1 − with/without (noisier).",
        "",
        "| model | variant | step samples/s | with pipeline | × fp32 | data share | measured |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for model, variants in results["train"].items():
        fp32 = variants.get("fp32", {}).get("step")
        for variant, r in variants.items():
            speedup = f"{r['step'] / fp32:.2f}×" if fp32 else "–"
            lines.append(
                f"| {model} | {variant} | {fmt(r['step'], 1)} | {fmt(r['with_pipeline'], 1)} | {speedup} | "
                f"{100 * r['share']:.2f} % | {100 * r['share_measured']:.1f} % |"
            )
    s = results.get("startup")
    if s:
        lines += [
            "",
            "### 3. Startup (fresh process each; cnn4 first step)",
            "",
            "| start | clips | caches ready s | first batch s | first train step s "
            "| process wall s | peak RSS GB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name in ("cold", "warm"):
            r = s[name]
            label = (
                "cold (empty cache: decode + log-mel every clip)"
                if name == "cold"
                else "warm (cache present)"
            )
            lines.append(
                f"| {label} | {r['clips']} | {r['setup_s']:.1f} | {r['first_batch_s']:.1f} | "
                f"{r['first_step_s']:.1f} | {r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} |"
            )
        lines.append(
            f"\nCache: {s['warm']['cache_memory_gb']:.2f} GB in memory (the log-mels of every clip, mapped "
            "from the cache file and shared between processes), "
            f"{s['warm']['cache_disk_gb']:.2f} GB on disk (waveforms + log-mels). Seconds exclude "
            "interpreter start and imports; the wall column includes them."
        )
    # The targets were set for the 2-core development CPU (docs/performance.md); on a GPU the
    # same rows are printed for comparison, not as pass/fail of those targets.
    on_cpu = results["machine"].get("device", "cpu") == "cpu"
    heading = "### Targets" if on_cpu else "### Targets (set for a CPU; shown for comparison)"
    lines += ["", heading, "", "| target | measured | met |", "|---|---:|:---:|"]
    for name, measured, met in results["targets"]:
        lines.append(f"| {name} | {measured} | {'yes' if met else 'NO'} |")
    lines.append(f"\nBench process peak RSS: {results['peak_rss_gb']:.2f} GB.")
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    out = []
    p = results["pipeline"]
    ratio = p["ours"] / p["seed_style"]
    out.append(("input pipeline ≥ 30× seed-style", f"{ratio:.0f}×", ratio >= 30))
    cnn4 = results["train"].get("cnn4")
    if cnn4:
        best_name, best = max(cnn4.items(), key=lambda kv: kv[1]["step"])
        share = 100 * best["share"]
        out.append((f"data ≤ 2 % of a cnn4 epoch ({best_name}, fastest step)", f"{share:.2f} %", share <= 2))
    s = results.get("startup")
    if s:
        full = s["cold"]["clips"] == 2000
        cold = s["cold"]["first_step_s"]
        out.append(
            (
                f"cold start ≤ 60 s ({s['cold']['clips']} clips{'' if full else ', subset'})",
                f"{cold:.1f} s",
                cold <= 60,
            )
        )
        warm = s["warm"]["first_step_s"]
        out.append(
            ("warm start ≤ 5 s to the first training step (after imports)", f"{warm:.1f} s", warm <= 5)
        )
        mem = s["warm"]["cache_memory_gb"]
        out.append(("cache memory ≤ 1.5 GB", f"{mem:.2f} GB", mem <= 1.5))
    return out


# ---- main --------------------------------------------------------------------------------------
def bench_device(args: argparse.Namespace) -> torch.device:
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise UserError(f"--device {args.device}: {err} (use auto, cpu or cuda)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device is available here (use --device cpu)")
    return device


def prepare(args: argparse.Namespace) -> None:
    """What every benchmark does first: its thread count, and a one-line refusal of a folder
    without the dataset (``--root``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.root or not (Path(args.root) / "meta" / "esc50.csv").is_file():
        raise UserError(f"--root {args.root}: no meta/esc50.csv there; set ESC50_ROOT or --root")


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    device = bench_device(args)
    mode = mode_for(args, device)
    models = args.models.split(",")
    for name in models:
        if name not in MODELS and name not in OWN_FRONTEND:
            known = ", ".join([*MODELS, *OWN_FRONTEND])
            raise UserError(f"--models: unknown model {name!r}; choose from {known}")
    results: dict[str, Any] = {
        "mode": "full" if args.full else "quick",
        "repeats": mode.repeats,
        "batch_size": args.batch_size,
        "machine": machine_info(device),
    }
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if not args.quiet else (lambda *a: None)

    tmp = Path(tempfile.mkdtemp(prefix="esc50-bench-"))
    try:
        if not args.skip_startup:
            log("startup: cold (fresh cache, every clip decoded) ...")
            cold = run_startup(args, tmp)
            log("startup: warm ...")
            warm = run_startup(args, tmp)
            results["startup"] = {"cold": cold, "warm": warm, "cache_dir": str(tmp)}
            cache_dir = tmp  # now warm: reuse it for everything below
        else:
            cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else None
            cache_dir = cache_dir or Path(bench_config(args, tmp).data.cache_dir)

        cfg = bench_config(args, cache_dir)
        dm = datamodule(cfg)
        results["clips"] = len(dm.table)
        paths = [dm.table.paths[i] for i in dm.sets["train"].rows.tolist()]
        module = build_variant(cfg, dm.class_names, "fp32", device)

        log("input pipeline ...")
        seed = [seed_style_rate(cfg, paths, mode.seed_items) for _ in range(mode.repeats)]
        ours = [pipeline_rate(dm, module, device, mode.pipeline_batches) for _ in range(mode.repeats)]
        waves_dm = datamodule(cfg, cache_features=False)
        waves = [pipeline_rate(waves_dm, module, device, mode.waveform_batches) for _ in range(mode.repeats)]
        del waves_dm
        results["pipeline"] = {
            "seed_style": statistics.median(seed),
            "ours": statistics.median(ours),
            "waves": statistics.median(waves),
        }

        results["train"] = {}
        for name in models:
            model_cfg = bench_config(args, cache_dir, model=name)
            model_dm = datamodule(model_cfg) if name in OWN_FRONTEND else dm  # its own log-mels
            results["train"][name] = {}
            for variant in mode.variants:
                log(f"train step: {name} {variant} ...")
                module = build_variant(model_cfg, dm.class_names, variant, device)
                step, with_pipe, _ = train_step_rates(module, variant, model_dm, device, mode)
                pipe = results["pipeline"]["ours"]
                results["train"][name][variant] = {
                    "step": step,
                    "with_pipeline": with_pipe,
                    "share": (1 / pipe) / (1 / pipe + 1 / step),
                    "share_measured": max(0.0, 1 - with_pipe / step),
                }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_end = os.getloadavg()[0]
    results["machine"]["load_average_end"] = round(load_end, 2)
    busy = max(results["machine"]["load_average_start"], load_end) > 1.5 * results["machine"]["cores"]
    results["machine"]["busy"] = busy
    results["peak_rss_gb"] = peak_rss_gb()
    results["targets"] = targets(results)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="python -m benchmarks",
        description="Input-pipeline, train-step and startup benchmark on the real ESC-50 clips.",
    )
    parser.add_argument("--full", action="store_true", help="longer runs, all speed variants (~15 min)")
    parser.add_argument("--root", default=os.environ.get("ESC50_ROOT"), help="ESC-50 folder ($ESC50_ROOT)")
    parser.add_argument("--cache-dir", help="cache to use with --skip-startup (default: the configured one)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's choice, one per core)"
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated (default: all three; cnn14 on request)"
    )
    parser.add_argument("--variants", help="comma-separated, e.g. fp32,bf16+cl (fp16, +cl, +compile)")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile variant (slow to build)")
    parser.add_argument("--repeats", type=int, help="repeats per figure (quick 3, full 5)")
    parser.add_argument("--steps", type=int, help="timed train steps per variant (quick 3, full 10)")
    parser.add_argument("--limit-per-class", type=int, help="clips per class and fold (smoke tests)")
    parser.add_argument("--skip-startup", action="store_true", help="skip the cold/warm start processes")
    parser.add_argument("--json", help="also write the raw figures to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--startup", help=argparse.SUPPRESS)  # internal: the startup child process
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def run() -> None:
        prepare(args)
        if args.startup:
            startup_child(args)
            return
        results = run_bench(args)
        print(render(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")

    run_guarded(run)


if __name__ == "__main__":
    main()
