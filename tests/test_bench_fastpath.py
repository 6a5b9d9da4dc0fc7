"""Smoke test of ``python -m benchmarks.fastpath`` (in-process, tiny settings): the table
has a row per model and path with numbers in every measured cell. Timings are never asserted."""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks import fastpath


def test_fastpath_bench_prints_a_row_per_model_and_path(
    esc50_root: Path, cache_dir: Path, tmp_path, capsys
) -> None:
    out = tmp_path / "fastpath.json"
    args = [
        "--root",
        str(esc50_root),
        "--cache-dir",
        str(cache_dir),
        "--models",
        "cnn4,experiment=long_schedule",
        "--limit-per-class",
        "1",
    ]
    args += ["--steps", "1", "--warmup", "0", "--repeats", "1", "--batch-size", "4", "--fast-batch-size", "8"]
    fastpath.main([*args, "--threads", "1", "--device", "cpu", "--quiet", "--json", str(out)])
    text = capsys.readouterr().out
    assert "## Today's path against the fast path" in text and "- peak: n/a" in text
    number = re.compile(r"^[\d,]+\.\d+(×| %)?$")
    for path, batch in (("today", "4"), ("resident", "4"), ("fast", "8")):
        (line,) = [ln for ln in text.splitlines() if ln.startswith(f"| cnn4 | {path} |")]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == batch
        assert all(number.match(c) for c in [cells[4], cells[5], cells[7], cells[8], cells[11]]), cells
        # CPU: no peak, no profiler, no CUDA sync counter
        assert cells[6].endswith("(derived)") and cells[9] == cells[10] == cells[12] == "n/a"
        assert 0 < float(cells[13]) < 10  # a finite loss: the path trains
    raw = json.loads(out.read_text())
    assert raw["train_clips"] == 200 and set(raw["models"]["cnn4"]) == {"today", "resident", "fast"}
    # a recipe's row: its vgg8 on its 56x200 crops, between-class mixing and time stretch included
    recipe = raw["models"]["experiment=long_schedule"]
    assert set(recipe) == {"today", "resident", "fast"}
    assert recipe["fast"]["flops_per_sample"] == recipe["today"]["flops_per_sample"] > 0
    assert recipe["fast"]["flops_per_sample"] != raw["models"]["cnn4"]["fast"]["flops_per_sample"]
    assert "| experiment=long_schedule | fast | 8 |" in text
    assert (
        raw["models"]["cnn4"]["today"]["flops_per_sample"]
        == raw["models"]["cnn4"]["fast"]["flops_per_sample"]
        > 0
    )


def test_compile_on_a_bf16_cpu_is_refused_in_one_line(esc50_root: Path, monkeypatch, capsys) -> None:
    """The fast path runs bf16 on a CPU with bf16 instructions, where torch.compile corrupted
    memory (scripts/compile_bf16_check.py): ``--compile`` there is one error line, before any work."""
    import pytest

    monkeypatch.setattr(fastpath, "cpu_has_native_bf16", lambda: True)
    with pytest.raises(SystemExit) as done:
        fastpath.main(["--root", str(esc50_root), "--device", "cpu", "--compile", "--models", "cnn4"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --compile on this CPU: the fast path runs bf16 here, and torch.compile")
    assert len(err.strip().splitlines()) == 1


def test_fastpath_bench_puts_float32_beside_the_default_precision(
    esc50_root: Path, cache_dir: Path, tmp_path, capsys
) -> None:
    """``--paths fp32,default``: the recipe at 32-true and at trainer.precision=auto resolved for this
    machine, and the ratio of the two printed under the table. Timings are never asserted."""
    from esc50_lightning.training.precision import cpu_has_native_bf16

    out = tmp_path / "fastpath.json"
    args = ["--root", str(esc50_root), "--cache-dir", str(cache_dir), "--models", "experiment=vgg8_bc_hour"]
    args += ["--paths", "fp32,default", "--limit-per-class", "1", "--steps", "1", "--warmup", "0"]
    args += ["--repeats", "1", "--batch-size", "4", "--threads", "1", "--device", "cpu", "--quiet"]
    fastpath.main([*args, "--json", str(out)])
    text = capsys.readouterr().out
    default = "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    dtype = "bf16" if default == "bf16-mixed" else "fp32"
    assert "| experiment=vgg8_bc_hour | fp32 | 4 | fp32+channels_last |" in text  # the recipe's channels_last
    assert f"| experiment=vgg8_bc_hour | default | 4 | {dtype}+channels_last |" in text
    assert "| × fp32 |" in text  # the first path is the ratio column's reference
    raw = json.loads(out.read_text())
    ratio = raw["precision_ratios"]["experiment=vgg8_bc_hour"]
    assert ratio["default"] == default and ratio["ratio"] > 0
    assert f"- experiment=vgg8_bc_hour: {default} {ratio['ratio']:.2f}× float32's samples/s" in text


def test_unknown_paths_are_refused_in_one_line(esc50_root: Path, capsys) -> None:
    import pytest

    with pytest.raises(SystemExit) as done:
        fastpath.main(["--root", str(esc50_root), "--device", "cpu", "--paths", "fp32,bf16"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --paths fp32,bf16: choose from today, resident, fast, fp32, default")
