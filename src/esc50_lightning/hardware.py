"""What the machine can do: CPU model and instruction sets (benchmarks, precision checks)."""

from __future__ import annotations

import platform
from pathlib import Path

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
