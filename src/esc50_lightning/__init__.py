"""esc50-lightning: environmental sound classification with PyTorch Lightning and Hydra.

Layout: ``data`` (files → cached tensors), ``features`` (audio → log-mel model inputs, on the
training device), ``models`` (features → logits), ``classifier``/``metrics`` (logits → loss and
epoch metrics), ``train``/``evaluate``/``predict``/``export``/``report`` (the commands).
"""

import warnings

__version__ = "0.1.0"

# Lightning notes that the module's on_after_batch_transfer wins over the DataModule's: by design.
warnings.filterwarnings("ignore", message=r".*overridden `on_after_batch_transfer`.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
