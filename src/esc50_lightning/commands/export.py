"""Export a checkpoint as a self-contained model that takes raw waveforms.

``python -m esc50_lightning.export --ckpt PATH [--out DIR] [--force]`` writes, in DIR (default:
the current folder), ``<name>.torchscript.pt`` (always), ``<name>.onnx`` (when the ONNX exporter
manages) and ``<name>.json`` (class names, sample rate, input length). It refuses a DIR inside the
installed package (the shipped model's folder) and, without ``--force``, any of those files that
already exists, before writing anything. Each file is written to a temporary name and renamed
into place once all are complete, so a failed export leaves no half-written file.

Both models map float waveforms ``(batch, samples)`` at the checkpoint's sample rate (44.1 kHz
for ESC-50), scaled to [-1, 1], of exactly the training clip length (220500 samples for ESC-50),
to **logits** ``(batch, classes)``; apply a softmax for probabilities. The spectrogram frontend
(log-mel, standardisation, centred crop) is inside the model. Longer recordings: slide windows of
that length, as ``esc50_lightning.predict`` does.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from esc50_lightning.checkpoints.record import checkpoint_path
from esc50_lightning.commands.arguments import export_parser
from esc50_lightning.data.audio import clip_samples
from esc50_lightning.errors import UserError, run_guarded
from esc50_lightning.factory import load_classifier
from esc50_lightning.features import FeatureExtractor

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed package, above commands/


class WaveformClassifier(nn.Module):
    """Frontend and network of a trained module: waveforms ``(B, T)`` → logits ``(B, classes)``."""

    def __init__(self, features: FeatureExtractor, net: nn.Module):
        super().__init__()
        self.features = features
        self.net = net

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.features.pool(self.net(self.features(waveform)))


class FixedLengthInput(nn.Module):
    """Refuses inputs of another shape: the traced crop offsets hold only for the traced length."""

    def __init__(self, model: nn.Module, samples: int):
        super().__init__()
        self.model = model
        self.samples = samples

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2 or waveform.size(1) != self.samples:
            raise RuntimeError(f"expected waveforms of shape (batch, {self.samples})")
        return self.model(waveform)


def example_input(samples: int, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(batch, samples, generator=generator)


def export_torchscript(model: WaveformClassifier, samples: int, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example_input(samples), check_trace=False)
    scripted = torch.jit.script(FixedLengthInput(traced, samples))
    scripted.save(str(path))
    return path


def export_onnx(model: WaveformClassifier, samples: int, path: Path) -> tuple[Path | None, str]:
    """Try the dynamo exporter, then the TorchScript-based one; return (path or None, why not)."""
    example = (example_input(samples),)
    names = {"input_names": ["waveform"], "output_names": ["logits"]}
    attempts = {
        "dynamo": lambda: torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=True,
            dynamic_shapes={"waveform": {0: torch.export.Dim("batch")}},
            external_data=False,
            **names,
        ),
        "legacy": lambda: torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=False,
            dynamic_axes={"waveform": {0: "batch"}, "logits": {0: "batch"}},
            **names,
        ),
    }
    failures = []
    for name, attempt in attempts.items():
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                attempt()
            return path, ""
        except Exception as err:  # the exporters raise many types; any failure means "no ONNX"
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            failures.append(f"{name} exporter: {err.__class__.__name__}: {first[:160]}")
            path.unlink(missing_ok=True)
    return None, "; ".join(failures)


def onnx_max_difference(path: Path, model: WaveformClassifier, samples: int) -> float | None:
    """Largest absolute logit difference between onnxruntime and PyTorch (None without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = example_input(samples, batch=3)
    (ours,) = session.run(None, {"waveform": x.numpy()})
    with torch.inference_mode():
        ref = model(x).numpy()
    return float(np.abs(ours - ref).max())


def export_targets(ckpt: Path, out: Path, onnx: bool = True) -> dict[str, Path]:
    """The files an export of ``ckpt`` into ``out`` writes (ONNX only where it is attempted)."""
    targets = {"torchscript": out / f"{ckpt.stem}.torchscript.pt"}
    if onnx:
        targets["onnx"] = out / f"{ckpt.stem}.onnx"
    targets["metadata"] = out / f"{ckpt.stem}.json"
    return targets


def check_destination(out: Path, targets: dict[str, Path], force: bool) -> None:
    """Refuse, before anything is written, a folder inside the installed package, a ``--out``
    that is not a folder, and (without ``force``) target files that exist already."""
    resolved = out.resolve()
    if resolved == PACKAGE_DIR or PACKAGE_DIR in resolved.parents:
        raise UserError(
            f"--out {out}: inside the installed package ({PACKAGE_DIR}); "
            "export to a folder of your own (the default is the current folder)"
        )
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is a file, not a folder")
    folders = [str(p) for p in targets.values() if p.is_dir()]
    if folders:
        raise UserError(f"{', '.join(folders)}: a folder is in the way of the export; nothing was written")
    present = [str(p) for p in targets.values() if p.exists() or p.is_symlink()]
    if present and not force:
        verb = "exists" if len(present) == 1 else "exist"
        raise UserError(
            f"{', '.join(present)}: already {verb} (pass --force to overwrite); nothing was written"
        )


@contextlib.contextmanager
def staged(targets: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """Temporary paths beside ``targets``; those that hold a file at the end are fsynced and
    renamed onto their targets, and none is left behind on an error."""
    temps: dict[str, Path] = {}
    try:
        for key, target in targets.items():
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            temps[key] = Path(name)
        yield temps
        for key, temp in temps.items():
            if temp.exists():
                with open(temp, "rb") as handle:
                    os.fsync(handle.fileno())
                os.chmod(temp, 0o644)  # mkstemp creates 0600; exported models are meant to be shared
                os.replace(temp, targets[key])
            else:  # a failed ONNX export removes its file: no earlier export's model stays beside
                targets[key].unlink(missing_ok=True)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)


def export(
    ckpt: str | Path, out_dir: str | Path | None = None, onnx: bool = True, force: bool = False
) -> dict[str, Any]:
    """Write the exported model files into ``out_dir`` (default: the current folder); return what
    was written (and why ONNX was not, if so). Checks every target before writing any."""
    ckpt = checkpoint_path(ckpt)
    out = Path(out_dir).expanduser() if out_dir else Path.cwd()
    targets = export_targets(ckpt, out, onnx)
    check_destination(out, targets, force)
    module, info = load_classifier(ckpt)
    data = info["data"]
    samples = clip_samples(int(data["sample_rate"]), float(data["clip_seconds"]))
    model = WaveformClassifier(module.features, module.net).eval()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with staged(targets) as temps:
            return _write(ckpt, module, info, model, samples, targets, temps)
    except OSError as err:
        reason = err.strerror or str(err)
        raise UserError(f"--out {out}: cannot write there ({reason}); nothing was written") from None


def _write(
    ckpt: Path,
    module: Any,
    info: dict[str, Any],
    model: WaveformClassifier,
    samples: int,
    targets: dict[str, Path],
    temps: dict[str, Path],
) -> dict[str, Any]:
    data = info["data"]
    export_torchscript(model, samples, temps["torchscript"])
    written: dict[str, Any] = {"torchscript": targets["torchscript"]}
    onnx_path, onnx_skipped = (
        export_onnx(model, samples, temps["onnx"]) if "onnx" in temps else (None, "--no-onnx")
    )
    written["onnx"] = targets["onnx"] if onnx_path is not None else None
    written["onnx_skipped"] = onnx_skipped
    if onnx_path is not None:
        written["onnx_max_abs_difference"] = onnx_max_difference(onnx_path, model, samples)
    sidecar = {
        "class_names": module.class_names,
        "sample_rate": int(data["sample_rate"]),
        "input_samples": samples,
        "input": f"float32 waveforms (batch, {samples}) in [-1, 1], mono, at {data['sample_rate']} Hz",
        "output": "logits (batch, classes); softmax gives probabilities",
        "model": info.get("model_name"),
        "dataset": data["dataset"],
        "trained_protocol": data["protocol"],
        "trained_fold": data["fold"],
        "trained_splits": data["splits"],
        "checkpoint": str(ckpt.resolve()),
        "files": {k: Path(v).name for k, v in written.items() if k in ("torchscript", "onnx") and v},
    }
    temps["metadata"].write_text(json.dumps(sidecar, indent=2) + "\n")
    written["metadata"] = targets["metadata"]
    return written


def main(argv: list[str] | None = None) -> None:
    args = export_parser().parse_args(argv)

    def run() -> None:
        written = export(args.ckpt, args.out, onnx=not args.no_onnx, force=args.force)
        print(f"TorchScript: {written['torchscript']}")
        if written["onnx"] is not None:
            diff = written.get("onnx_max_abs_difference")
            check = "" if diff is None else f" (onnxruntime vs PyTorch: max |logit difference| {diff:.2e})"
            print(f"ONNX: {written['onnx']}{check}")
        else:
            print(f"ONNX skipped: {written['onnx_skipped']}")
        print(f"class names and input format: {written['metadata']}")

    run_guarded(run)


if __name__ == "__main__":
    main()
