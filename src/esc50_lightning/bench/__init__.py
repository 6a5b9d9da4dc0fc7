"""Benchmarks: ``python -m esc50_lightning.bench`` (input pipeline, train step, start-up),
``python -m esc50_lightning.bench.loop`` (the framework against a bare PyTorch loop) and
``python -m esc50_lightning.bench.fastpath`` (today's training path against speed=gpu_fast's)."""
