"""Whether the GPU this process trains on is shared through an MPS daemon (NVIDIA's Multi-Process
Service), for the log of runs that share one GPU (``hydra/launcher=shared_gpu``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Where CUDA clients look for a running MPS daemon's pipes unless CUDA_MPS_PIPE_DIRECTORY says.
DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"


def mps_daemon_status() -> str:
    """One sentence: an MPS daemon found (its control pipe), or none (the GPU time-slices)."""
    pipes = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIRECTORY)
    if (pipes / "control").exists():
        return (
            f"CUDA MPS daemon found (control pipe in {pipes}): processes on this GPU run kernels concurrently"
        )
    hint = (
        "; nvidia-cuda-mps-control -d would start one"
        if shutil.which("nvidia-cuda-mps-control")
        else " (nvidia-cuda-mps-control is not installed)"
    )
    return f"no CUDA MPS daemon (no control pipe in {pipes}): processes on this GPU time-slice it{hint}"
