"""Classify your own recordings with a trained checkpoint.

``python -m esc50_lightning.predict [--ckpt PATH] FILE_OR_DIR...`` prints the top-k classes of
every file. Any file soundfile reads works (WAV, FLAC, OGG, MP3, ...), at any sample rate, mono
or multi-channel (averaged), of any length: a file shorter than the training clip is zero-padded,
a longer one is scored over sliding windows of the clip length whose probabilities are averaged.
A file that cannot be used (unreadable, empty, cut short, holding NaN or infinite samples) gets one
``error:`` line naming it and the problem; the others are still predicted, and the exit status is 1
at the end. Entries of a folder that are not predicted (a sub-folder named like an audio file,
a broken link, files without an audio suffix) are named on stderr in ``skipped:`` lines.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from esc50_lightning.atomic import atomic_file
from esc50_lightning.commands.arguments import PRETRAINED, predict_parser
from esc50_lightning.data.audio import AudioReadError, clip_samples, fit_length, read_mono
from esc50_lightning.errors import UserError, run_guarded
from esc50_lightning.factory import load_classifier
from esc50_lightning.training.classifier import AudioClassifier

# Shorter recordings are refused: mostly padding, their label would be a guess shown as confident.
MIN_SECONDS = 0.1
# Suffixes picked up when a folder is given (files named explicitly are always tried).
AUDIO_SUFFIXES = {f".{ext.lower()}" for ext in sf.available_formats()} | {".aif", ".oga", ".opus"}


@dataclass
class Predictor:
    """A checkpoint's model and frontend in eval mode, scoring waveforms window by window."""

    module: AudioClassifier
    info: dict[str, Any]
    device: torch.device
    hop_seconds: float | None = None
    batch_size: int = 32

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **kwargs: Any) -> Predictor:
        target = parse_device(device)
        try:
            module, info = load_classifier(path)
        except UserError:
            from esc50_lightning.audioset import audioset_tagger, is_published_checkpoint

            if not is_published_checkpoint(path):
                raise
            module, info = audioset_tagger(path)  # PANNs' CNN14 file: tags AudioSet's 527 labels
        return cls(module.to(target).eval(), info, target, **kwargs)

    @property
    def multi_label(self) -> bool:
        """Independent sigmoid scores per class (AudioSet tags) instead of a softmax."""
        return bool(self.info.get("multi_label"))

    @property
    def sample_rate(self) -> int:
        return int(self.info["data"]["sample_rate"])

    @property
    def window(self) -> int:
        return clip_samples(self.sample_rate, float(self.info["data"]["clip_seconds"]))

    @property
    def hop(self) -> int:
        if self.hop_seconds is None:
            return max(1, self.window // 2)
        return max(1, round(self.hop_seconds * self.sample_rate))

    @property
    def class_names(self) -> list[str]:
        return self.module.class_names

    def window_starts(self, length: int) -> list[int]:
        """Window offsets covering the whole signal; the last window ends at its end."""
        if length <= self.window:
            return [0]
        starts = list(range(0, length - self.window + 1, self.hop))
        if starts[-1] + self.window < length:
            starts.append(length - self.window)
        return starts

    @torch.inference_mode()
    def window_probabilities(self, samples: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Class probabilities ``(windows, classes)`` for a mono waveform at ``sample_rate``."""
        starts = self.window_starts(len(samples))
        windows = np.stack([fit_length(samples[s : s + self.window], self.window) for s in starts])
        probs = []
        for i in range(0, len(windows), self.batch_size):
            batch = torch.from_numpy(windows[i : i + self.batch_size]).to(self.device)
            logits = self.module(self.module.features(batch))
            scores = (
                torch.sigmoid(logits.float()) if self.multi_label else torch.softmax(logits.float(), dim=1)
            )
            probs.append(scores.cpu().numpy())
        return starts, np.concatenate(probs)

    def predict_file(self, path: Path, top_k: int, per_window: bool) -> dict[str, Any]:
        clip = read_mono(path, self.sample_rate)
        if len(clip.samples) < MIN_SECONDS * self.sample_rate:
            # padded to the clip length with silence, it would still get a confident label
            raise AudioReadError(
                f"too short to judge ({len(clip.samples) / self.sample_rate:.3f} s; the model hears "
                f"{self.window / self.sample_rate:g} s clips): give at least {MIN_SECONDS} s of sound"
            )
        starts, probs = self.window_probabilities(clip.samples)
        if not np.isfinite(probs).all():  # finite but huge samples can overflow the spectrogram
            peak = float(np.abs(clip.samples).max())
            raise AudioReadError(
                f"the model's scores are not finite (largest |sample| {peak:.3g}; audio belongs in [-1, 1])"
            )
        result: dict[str, Any] = {
            "file": str(path),
            "duration_seconds": round(len(clip.samples) / self.sample_rate, 3),
            "source_sample_rate": clip.source_rate,
            "source_channels": clip.source_channels,
            "windows": len(starts),
            "top": self._top(probs.mean(axis=0), top_k),
        }
        if per_window:
            result["per_window"] = [
                {
                    "start_seconds": round(s / self.sample_rate, 3),
                    "end_seconds": round(min(s + self.window, len(clip.samples)) / self.sample_rate, 3),
                    "top": self._top(p, top_k),
                }
                for s, p in zip(starts, probs, strict=True)
            ]
        return result

    def _top(self, probs: np.ndarray, k: int) -> list[dict[str, Any]]:
        order = np.argsort(-probs, kind="stable")[:k]
        return [
            {"class": self.class_names[i], "index": int(i), "probability": round(float(probs[i]), 6)}
            for i in order
        ]


def parse_device(device: str) -> torch.device:
    """``--device`` as a torch device, or a ``UserError`` saying why it cannot be used here."""
    try:
        target = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device}: not a device name (use cpu, cuda or cuda:N)") from None
    if target.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: not supported (use cpu, cuda or cuda:N)")
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here (use --device cpu)")
        if target.index is not None and target.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise UserError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0-{count - 1}")
    return target


def _shown(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def expand_inputs(items: list[str]) -> tuple[list[Path], list[str]]:
    """Files as given, folders expanded to the audio files under them (sorted).

    Returns the paths and one ``skipped`` note per folder entry that is not predicted: each
    entry named like an audio file that is not one (a folder, a broken link, a pipe), and per
    folder the files without an audio suffix. Files named explicitly are always tried.
    """
    paths: list[Path] = []
    skipped: list[str] = []
    for item in items:
        path = Path(item).expanduser()
        if not path.is_dir():
            paths.append(path)
            continue
        other: list[str] = []
        for entry in sorted(path.rglob("*")):
            audio_name = entry.suffix.lower() in AUDIO_SUFFIXES
            if entry.is_file():
                if audio_name:
                    paths.append(entry)
                else:
                    other.append(str(entry.relative_to(path)))
            elif audio_name:
                if entry.is_dir():
                    skipped.append(f"{entry}/ is a folder, not an audio file (its contents are searched)")
                elif entry.is_symlink() and not entry.exists():
                    skipped.append(f"{entry} is a broken link")
                else:
                    skipped.append(f"{entry} is not a regular file")
        if other:
            skipped.append(f"{len(other)} file(s) in {path}/ without an audio suffix: {_shown(other)}")
    return paths, skipped


def resolve_checkpoint(ckpt: str | None) -> Path:
    if ckpt:
        return Path(ckpt).expanduser()
    if not PRETRAINED.is_file():
        raise UserError(
            f"no --ckpt given and the shipped model {PRETRAINED} is not installed; "
            "pass --ckpt PATH (e.g. outputs/train/runs/<run>/checkpoints/last.ckpt)"
        )
    return PRETRAINED


def _print_result(result: dict[str, Any], per_window: bool) -> None:
    windows = result["windows"]
    print(
        f"{result['file']}  ({result['duration_seconds']:.2f} s, {result['source_sample_rate']} Hz, "
        f"{result['source_channels']} ch, {windows} window{'s' if windows != 1 else ''})"
    )
    for rank, item in enumerate(result["top"], 1):
        print(f"  {rank}. {item['class']:<20} {item['probability']:.3f}")
    if per_window and windows > 1:
        for w in result["per_window"]:
            best = w["top"][0]
            span = f"{w['start_seconds']:7.2f}-{w['end_seconds']:.2f} s"
            print(f"     {span}  {best['class']} {best['probability']:.3f}")


def build_parser() -> argparse.ArgumentParser:
    return predict_parser()


def json_target(option: str | None) -> Path | None:
    """The ``--json PATH`` file, checked before any work: its folder exists, it is not a folder,
    and it is not named like an audio file (``--json a.wav b.wav`` would overwrite ``a.wav``)."""
    if option is None or option == "-":
        return None
    target = Path(option).expanduser()
    if target.suffix.lower() in AUDIO_SUFFIXES:
        raise UserError(
            f"--json {option}: named like an audio file; give a .json path "
            "(or put --json last to print the JSON)"
        )
    if target.is_dir():
        raise UserError(f"--json {option}: is a folder; give a file path")
    if not target.parent.is_dir():
        raise UserError(f"--json {option}: folder {target.parent} does not exist")
    return target


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def run() -> int:
        if args.top_k < 1:
            raise UserError(f"--top-k {args.top_k}: must be at least 1")
        if args.hop is not None and not (math.isfinite(args.hop) and args.hop > 0):
            raise UserError(f"--hop {args.hop}: must be a positive number of seconds")
        if args.batch_size < 1:
            raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
        json_path = json_target(args.json)
        ckpt = resolve_checkpoint(args.ckpt)
        paths, skipped = expand_inputs(args.inputs)
        for note in skipped:
            print(f"skipped: {note}", file=sys.stderr)
        if not paths:
            raise UserError(f"no audio files found in {' '.join(args.inputs)}")
        predictor = Predictor.from_checkpoint(
            ckpt, args.device, hop_seconds=args.hop, batch_size=args.batch_size
        )
        top_k = min(args.top_k, len(predictor.class_names))
        text = args.json != "-"
        results, errors = [], []
        for path in paths:
            try:
                if not path.exists():
                    raise AudioReadError("no such file")
                if not path.is_file():
                    raise AudioReadError("not a regular file")
                result = predictor.predict_file(path, top_k, args.per_window)
            except AudioReadError as err:
                errors.append({"file": str(path), "error": str(err)})
                print(f"error: {path}: {err}", file=sys.stderr)
                continue
            results.append(result)
            if text:
                _print_result(result, args.per_window)
        if args.json:
            payload = {
                "checkpoint": str(ckpt),
                "model": predictor.info.get("model_name"),
                "sample_rate": predictor.sample_rate,
                "window_seconds": predictor.window / predictor.sample_rate,
                "hop_seconds": predictor.hop / predictor.sample_rate,
                "aggregation": "mean of window probabilities",
                "results": results,
                "errors": errors,
            }
            encoded = json.dumps(payload, indent=2)
            if json_path is None:
                print(encoded)
            else:
                try:
                    with atomic_file(json_path, "w") as handle:
                        handle.write(encoded + "\n")
                except OSError as err:
                    raise UserError(f"--json {args.json}: cannot write ({err.strerror or err})") from None
                print(f"wrote {args.json}")
        return 1 if errors else 0

    sys.exit(run_guarded(run))


if __name__ == "__main__":
    main()
