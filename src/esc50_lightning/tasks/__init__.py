"""The Hydra tasks behind ``train.py`` and ``eval.py``: config checks, resume, training, evaluation,
and what a finished run leaves behind (metrics.json, predictions, summary)."""
