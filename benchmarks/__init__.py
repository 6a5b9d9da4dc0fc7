"""Benchmarks: ``python -m benchmarks`` (input pipeline, train step, start-up),
``python -m benchmarks.loop`` (the framework against a bare PyTorch loop) and
``python -m benchmarks.fastpath`` (today's training path against speed=gpu_fast's)."""
