"""``python -m esc50_lightning.bench``: the input-pipeline and train-step benchmark."""

from esc50_lightning.bench.pipeline import main

main()
