"""Which numeric precision a run uses: ``trainer.precision=auto`` resolved for the machine (bf16
autocast where it runs natively, float32 elsewhere), a bf16 request switched to float32 where bf16
would only be emulated, and compiled bf16 kept off CPUs."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

AUTO = "auto"
FLOAT32 = "32-true"
BF16 = "bf16-mixed"

# Instruction sets that run bf16 matrix products natively; without them oneDNN emulates bf16 and
# an autocast step is several times slower than float32 (see docs/performance.md).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# torch's CPU probes (cpuinfo) answer for x86 only; elsewhere they say False about any CPU.
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})

log = logging.getLogger(__name__)


def _cpuinfo_field(prefix: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where that file does not exist."""
    flags = _cpuinfo_field("flags")
    return set(flags.split()) if flags else set()


def _torch_bf16_instructions() -> list[str] | None:
    """The native bf16 instruction sets torch's own CPU probes find; None where they cannot tell
    (not x86, or a torch without the probes)."""
    if platform.machine().lower() not in X86_MACHINES:
        return None
    try:
        found = ["AMX"] if torch.cpu._is_amx_tile_supported() else []  # every AMX CPU has AMX-BF16
        return [*found, "avx512_bf16"] if torch.cpu._is_avx512_bf16_supported() else found
    except AttributeError:  # private helpers: fall back to the flags if a release drops them
        return None


def cpu_bf16_instructions(flags: set[str] | None = None) -> list[str] | None:
    """The CPU's native bf16 instruction sets ([] for none); None where they cannot be known.

    torch's probes first (they work on any x86 OS), then the /proc/cpuinfo flags; ``flags`` given:
    those flags alone."""
    if flags is None:
        found = _torch_bf16_instructions()
        if found is not None:
            return found
        flags = cpu_flags()
    return sorted(flags & BF16_FLAGS) if flags else None


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool | None:
    """True/False where the CPU's bf16 support is known (x86); None where it is not."""
    found = cpu_bf16_instructions(flags)
    return None if found is None else bool(found)


def cpu_capability() -> str:
    """torch's vector capability for this CPU (e.g. AVX512, AVX2, DEFAULT), for the log line."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def auto_precision(cfg: DictConfig, on_cpu: bool) -> tuple[str, str]:
    """What ``trainer.precision=auto`` means for this run, and why: bf16 autocast where the device
    runs it natively (a GPU with bf16, a CPU with AVX-512 BF16 or AMX), float32 elsewhere."""
    accelerator = cfg.trainer.get("accelerator")
    if on_cpu:
        if cfg.get("compile"):
            # the user asked for compile; compiled bf16 is unsafe on a CPU, compiled float32 is not
            return FLOAT32, "compile=true on a CPU: compiled bf16 corrupts memory (docs/reliability.md)"
        found = cpu_bf16_instructions()
        where = f"this CPU ({cpu_model()}; torch capability {cpu_capability()})"
        if found:
            return BF16, f"{where} runs bf16 natively ({', '.join(found)})"
        if found is None:
            return FLOAT32, f"whether {where} runs bf16 natively is unknown (not x86, or no CPU flags)"
        return FLOAT32, f"{where} has no native bf16 (AVX-512 BF16 or AMX): bf16 would be emulated, slower"
    if accelerator == "mps":
        return FLOAT32, "Apple GPUs (MPS): autocast there is partial and not faster for these models"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return BF16, f"the GPU ({name}) runs bf16 natively"
        return FLOAT32, f"the GPU ({name}) has no native bf16"
    return FLOAT32, f"trainer.accelerator={accelerator}: no rule for it, so float32"


def use_native_precision(cfg: DictConfig, on_cpu: bool) -> None:
    """Resolve ``trainer.precision=auto`` for this machine (one log line: what and why), and switch a
    CPU run's bf16 request to ``32-true`` where the CPU has no bf16 instructions."""
    precision = str(cfg.trainer.get("precision", ""))
    if precision == AUTO:
        precision, why = auto_precision(cfg, on_cpu)
        hint = "; trainer.precision=32-true forces float32" if precision != FLOAT32 else ""
        log.info("trainer.precision=auto chose %s: %s%s", precision, why, hint)
        with open_dict(cfg):
            cfg.trainer.precision = precision
    if on_cpu and precision.startswith("bf16") and cpu_has_native_bf16() is False:
        # bf16 only buys speed here, and without bf16 instructions oneDNN emulates it: the step is
        # several times slower than float32 (python -m benchmarks shows the figures).
        log.warning(
            "trainer.precision=%s: this CPU (%s) has no bf16 instructions (avx512_bf16/amx_bf16), "
            "where bf16 runs several times slower than float32; training with 32-true instead",
            precision,
            cpu_model(),
        )
        with open_dict(cfg):
            cfg.trainer.precision = FLOAT32


# Why compile=true stays off for bf16 on a CPU (scripts/compile_bf16_check.py checks a machine).
CPU_BF16_COMPILE = (
    "torch.compile with bf16 on a CPU corrupted memory in our runs (torch 2.11 inductor, AMD EPYC "
    "with avx512_bf16: glibc heap errors, segmentation faults, NaN losses, in most runs; eager bf16 "
    "and compiled float32 were fine; scripts/compile_bf16_check.py re-checks a machine)"
)


def compile_bf16_on_cpu(cfg: DictConfig, on_cpu: bool) -> None:
    """Turn ``compile`` off for a bf16 run on a CPU (``CPU_BF16_COMPILE``), saying so."""
    precision = str(cfg.trainer.get("precision", ""))
    if on_cpu and cfg.get("compile") and precision.startswith("bf16"):
        message = "compile=true with trainer.precision=%s: %s; training without compile"
        log.warning(message, precision, CPU_BF16_COMPILE)
        with open_dict(cfg):
            cfg.compile = False
