"""esc50-lightning: environmental sound classification with PyTorch Lightning and Hydra.

The folders follow the data: ``data`` (files → cached clips), ``features`` (clips → log-mels, on the
training device), ``models`` (log-mels → logits), ``training`` (logits → loss, metrics, schedules),
``tasks`` (train and evaluate, behind ``train.py``/``eval.py``). ``checkpoints`` reads and writes
trained models, ``hydra_ext`` extends Hydra, ``conf`` holds the configs. The modules at the top
are the other commands: ``predict``, ``export``, ``report``, ``pack``, ``bench``.
"""

import warnings

__version__ = "1.0.0"

# Lightning notes that the module's on_after_batch_transfer wins over the DataModule's: by design.
warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer`.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
