"""Does torch.compile with bf16 autocast train safely on this machine's CPU?

Each mode runs as its own process, ``--runs`` times: cnn8 (random input of the default crop,
batches of 25 and 13, as an epoch's last batch) for 12 steps of forward, backward and Adam. A
process that crashes (glibc's "corrupted size vs. prev_size", a segmentation fault) or ends on a
non-finite loss is a failure; the final losses show whether repeated runs agree.

    python scripts/compile_bf16_check.py --runs 4

On the 2-core AMD EPYC (AVX2) with torch 2.11, compiled bf16 failed in most runs while eager
bf16 and compiled float32 never did (docs/results/cpu-compile-bf16/README.md): training refuses
to compile bf16 on a CPU for that reason (tasks/checks.py).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys

# what a failing child says: glibc's heap checks, or the step whose loss is not finite
CHILD_WORDS = re.compile(r"corrupt|free\(\)|invalid pointer|non-finite|Out of memory")
MODES = {
    "eager bf16": ["--precision", "bf16"],
    "compiled float32": ["--precision", "fp32", "--compile"],
    "compiled bf16": ["--precision", "bf16", "--compile"],
}


def child(precision: str, compile: bool) -> None:
    import torch
    import torch.nn.functional as F

    from esc50_lightning.models import CNN8

    torch.manual_seed(0)
    net = CNN8(num_classes=50)
    net = torch.compile(net) if compile else net
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-4)
    for step in range(12):
        batch = 25 if step % 4 else 13
        x = torch.randn(batch, 1, 100, 384)
        y = torch.randint(0, 50, (batch,))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if not torch.isfinite(loss):
            print(f"non-finite loss at step {step}")
            sys.exit(3)
    print(f"loss {float(loss):.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="processes per mode")
    parser.add_argument("--precision", choices=("bf16", "fp32"), help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.precision:  # a child process
        child(args.precision, args.compile)
        return
    import torch

    from esc50_lightning.training.precision import cpu_flags, cpu_model

    bf16 = sorted(f for f in cpu_flags() if "bf16" in f) or ["no bf16 flags"]
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}; {cpu_model()} ({', '.join(bf16)}); {threads} threads\n")
    print("| mode | runs | failed | final losses / failures |")
    print("|---|---:|---:|---|")
    for mode, flags in MODES.items():
        outcomes, failed = [], 0
        for _ in range(args.runs):
            proc = subprocess.run(
                [sys.executable, __file__, *flags], capture_output=True, text=True, timeout=600, check=False
            )
            printed = proc.stdout.strip().splitlines()
            if proc.returncode == 0 and printed and printed[-1].startswith("loss "):
                outcomes.append(printed[-1].removeprefix("loss "))
            else:  # the signal, and glibc's heap check or the non-finite step where printed
                failed += 1
                code = proc.returncode
                words = [w for w in (proc.stdout + proc.stderr).splitlines() if CHILD_WORDS.search(w)]
                how = signal.Signals(-code).name if code < 0 else f"exit {code}"
                outcomes.append(f"{how}{f' ({words[-1].strip()[:50]})' if words else ''}")
        print(f"| {mode} | {args.runs} | {failed} | {'; '.join(outcomes)} |", flush=True)


if __name__ == "__main__":
    main()
