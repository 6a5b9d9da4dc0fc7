"""``python -m benchmarks``: the input-pipeline and train-step benchmark."""

from benchmarks.pipeline import main

main()
