"""The commands' command lines, parsed before anything heavy is imported.

``python -m esc50_lightning.<command>`` runs :func:`forward`: it parses the arguments with the
command's parser from here, so ``--help`` and a mistake on the command line answer at once, and
only then imports the command (torch, Lightning, pandas...) and runs its ``main``. Each command's
``main`` builds its parser from here too: one definition per command. This module imports only
the standard library and ``esc50_lightning.errors``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from esc50_lightning.errors import CommandLineParser

# The model shipped in the package, predict's default checkpoint.
PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained" / "esc50_fold1.ckpt"


def predict_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="python -m esc50_lightning.predict",
        description="Top-k classes of audio files (any rate, channels and length) from a trained checkpoint.",
    )
    parser.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help="audio files or folders of them")
    parser.add_argument(
        "--ckpt", help=f"checkpoint written by train.py (default: {PRETRAINED.name}, shipped)"
    )
    parser.add_argument("--top-k", type=int, default=5, help="classes to show per file (default 5)")
    parser.add_argument(
        "--hop", type=float, default=None, help="seconds between window starts (default: half a window)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=32, help="windows scored at once (default 32)")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write machine-readable results to PATH (or stdout with no PATH, replacing the text output)",
    )
    parser.add_argument("--per-window", action="store_true", help="also report every window's scores")
    return parser


def export_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="python -m esc50_lightning.export",
        description="Export a checkpoint (frontend included) as TorchScript and, where possible, ONNX.",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    parser.add_argument("--out", help="output folder (default: the current folder)")
    parser.add_argument("--force", action="store_true", help="overwrite files of an earlier export")
    parser.add_argument("--no-onnx", action="store_true", help="write TorchScript only")
    return parser


def pack_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="python -m esc50_lightning.pack",
        description="Write a slim checkpoint (weights and run record, float16); with several sources, "
        "one that averages their predictions (an ensemble).",
    )
    parser.add_argument("src", nargs="+", help="trained checkpoint(s); several make an ensemble")
    parser.add_argument("dst")
    parser.add_argument("--fp32", action="store_true", help="keep float32 weights")
    parser.add_argument(
        "--eval-crop",
        metavar="MELS,FRAMES",
        help="centred cut the checkpoint scores from now on, e.g. 56,null (null: the whole axis)",
    )
    return parser


def report_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="python -m esc50_lightning.report",
        description="Summarise a multirun (or any folder of runs): per-fold tables with mean ± std, "
        "confusion matrices and per-class accuracy.",
    )
    parser.add_argument("dir", type=Path, help="a multirun folder, an outputs folder or any folder of runs")
    parser.add_argument("--out", type=Path, help="where to write the report (default DIR/report)")
    return parser


def cache_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir",
        type=Path,
        help="the cache folder (default: $ESC50_CACHE, else ~/.cache/esc50-lightning)",
    )
    parser = CommandLineParser(
        prog="python -m esc50_lightning.cache",
        description="List the decode cache's entries, or remove old ones.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{list,prune}")
    commands.add_parser("list", parents=[common], help="every entry with its size and last use")
    pruning = commands.add_parser("prune", parents=[common], help="remove entries (old ones, or all)")
    pruning.add_argument("--older-than", type=float, metavar="DAYS", help="entries not used for DAYS days")
    pruning.add_argument("--all", action="store_true", help="every entry")
    pruning.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    return parser


PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "predict": predict_parser,
    "export": export_parser,
    "pack": pack_parser,
    "report": report_parser,
    "cache": cache_parser,
}


def forward(command: str, argv: list[str] | None = None) -> None:
    """``python -m esc50_lightning.<command>``: parse (help and mistakes exit here, in well under
    a second), then import ``commands/<command>.py`` and run its ``main`` on the same arguments."""
    argv = sys.argv[1:] if argv is None else argv
    PARSERS[command]().parse_args(argv)
    importlib.import_module(f"esc50_lightning.commands.{command}").main(argv)
