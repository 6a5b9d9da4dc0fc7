"""The Hydra configs, one folder per concern, shipped inside the package so that every command
(``train.py``, ``eval.py``, the benchmark) finds them whether run from a checkout or installed."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent
