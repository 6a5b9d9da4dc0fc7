"""Benchmarks: ``python -m esc50_lightning.bench`` (input pipeline, train step, start-up) and
``python -m esc50_lightning.bench.loop`` (the framework against a bare PyTorch loop)."""
