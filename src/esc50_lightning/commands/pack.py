"""Pack trained checkpoints for others: slim copies (weights and run record, float16) and ensembles.

``python -m esc50_lightning.pack SRC.ckpt DST.ckpt [--eval-crop MELS,FRAMES]`` writes a slim copy;
``python -m esc50_lightning.pack A.ckpt B.ckpt [...] DST.ckpt`` one checkpoint that averages the
members' class probabilities. ``eval.py``, ``predict`` and ``export`` take either like any checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from esc50_lightning.commands.arguments import pack_parser
from esc50_lightning.errors import UserError, run_guarded
from esc50_lightning.factory import KEEP_EVAL_CROP
from esc50_lightning.features.extractor import CropSize
from esc50_lightning.tasks.pack import ensemble_checkpoint, slim_checkpoint

_WHOLE = ("null", "none", "full")  # spellings of "no cut": the whole axis, or the whole spectrogram


def parse_crop(text: str) -> list[CropSize] | None:
    """``"56,null"`` → ``[56, None]``; ``"null"`` → ``None`` (the whole spectrogram)."""

    def entry(value: str) -> CropSize:
        value = value.strip()
        if value in _WHOLE:
            return None
        try:
            return int(value)
        except ValueError:
            pass
        try:
            return float(value)
        except ValueError:
            raise UserError(
                f"--eval-crop {text}: {value!r} is not a number of bins, a fraction or null"
            ) from None

    if text.strip() in _WHOLE:
        return None
    parts = text.split(",")
    if len(parts) != 2:
        raise UserError(f"--eval-crop {text}: give MELS,FRAMES (e.g. 56,null) or null")
    return [entry(p) for p in parts]


def main(argv: list[str] | None = None) -> None:
    """``python -m esc50_lightning.pack SRC.ckpt [SRC.ckpt ...] DST.ckpt [--fp32]``: write a slim
    checkpoint; with several sources, one that averages their predictions (an ensemble)."""
    args = pack_parser().parse_args(argv)

    def build() -> Path:
        if len(args.src) == 1:
            crop = KEEP_EVAL_CROP if args.eval_crop is None else parse_crop(args.eval_crop)
            return slim_checkpoint(args.src[0], args.dst, half=not args.fp32, eval_crop=crop)
        if args.eval_crop is not None:
            raise UserError("--eval-crop applies to one checkpoint; set it on the members first")
        return ensemble_checkpoint(args.src, args.dst, half=not args.fp32)

    out = run_guarded(build)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
