"""Which numeric precision a run can use: the CPU model and its instruction sets, and the switch
of a bf16 request to float32 where bf16 would only be emulated."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

from omegaconf import DictConfig, open_dict

# Instruction sets that run bf16 matrix products natively; without them oneDNN emulates bf16 and
# an autocast step is several times slower than float32 (see docs/performance.md).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


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


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool | None:
    """True/False on x86 Linux (from the CPU flags); None where the flags cannot be read."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return None
    return bool(flags & BF16_FLAGS)


log = logging.getLogger(__name__)


def use_native_precision(cfg: DictConfig, on_cpu: bool) -> None:
    """Switch a CPU run's bf16 request to ``32-true`` where the CPU has no bf16 instructions."""
    precision = str(cfg.trainer.get("precision", ""))
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
            cfg.trainer.precision = "32-true"


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
