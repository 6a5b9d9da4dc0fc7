"""Smoke test of ``python -m benchmarks``: it runs on real clips and prints its tables.

Timings are never asserted: only that every section and row is there and the figures are numbers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import command_env, run_command

from esc50_lightning.training.precision import cpu_has_native_bf16

# The fast variant the machine can run: bf16 is emulated (several times slower) without bf16 instructions.
FAST = "bf16+cl" if cpu_has_native_bf16() is not False else "fp32+cl"


def test_bench_quick_path_prints_every_table(esc50_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # batches of 8: every table, at a fraction of the default batch's compute
    args = ["--limit-per-class", "1", "--repeats", "1", "--steps", "1", "--batch-size", "8"]
    args += ["--models", "cnn4", "--variants", f"fp32,{FAST}", "--threads", "1", "--json", str(out)]
    args += ["--root", str(esc50_root)]
    proc = run_command(["-m", "benchmarks", *args], env=command_env(esc50_root, tmp_path))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for heading in ("### 1. Input pipeline", "### 2. Train step", "### 3. Startup", "### Targets"):
        assert heading in text
    assert re.search(r"- CPU: .+, \d+ cores", text) and "torch 2." in text and "lightning " in text

    def row(prefix: str) -> list[str]:
        lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        assert len(lines) == 1, f"expected one row starting {prefix!r}"
        return [c.strip() for c in lines[0].strip("|").split("|")]

    number = re.compile(r"^[\d,]+(\.\d+)?(×| %| s| GB)?$")
    for prefix in ("| seed-style", "| ours: cached log-mels", "| ours, data.cache_features=false"):
        assert all(number.match(c) for c in row(prefix)[1:])
    assert row("| seed-style")[2] == "1.0×"
    for variant in ("fp32", FAST):
        cells = row(f"| cnn4 | {variant} |")
        assert all(number.match(c) for c in cells[2:]), cells
    assert row("| cnn4 | fp32 |")[4] == "1.00×"
    for start in ("| cold (", "| warm ("):
        cells = row(start)
        assert cells[1] == "250" and all(number.match(c) for c in cells[2:])
    for target in (
        "input pipeline ≥ 30×",
        "data ≤ 2 %",
        "cold start ≤ 60 s",
        "warm start ≤ 5 s",
        "cache memory",
    ):
        assert row(f"| {target}")[2] in ("yes", "NO")

    raw = json.loads(out.read_text())
    assert raw["clips"] == 250 and raw["startup"]["cold"]["clips"] == 250
    assert raw["pipeline"]["ours"] > 0 and raw["pipeline"]["seed_style"] > 0
    assert set(raw["train"]["cnn4"]) == {"fp32", FAST}
    # The bench removes the temporary cache it measured cold and warm starts in.
    assert not any(Path(raw["startup"]["cache_dir"]).glob("*"))


def test_bench_device_without_cuda_is_one_error_line(esc50_root: Path, tmp_path: Path) -> None:
    # CUDA hidden, so the answer is the same on a GPU machine; a device torch does not know is
    # refused the same way, before any data is read.
    env = command_env(esc50_root, tmp_path, CUDA_VISIBLE_DEVICES="")
    for device, expected in (("cuda", "no CUDA device is available"), ("gpu0", "use auto, cpu or cuda")):
        proc = run_command(["-m", "benchmarks", "--device", device, "--root", esc50_root], env=env)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --device {device}: "), proc.stderr
        assert expected in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()
