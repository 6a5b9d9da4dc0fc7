"""Hydra extensions: run-folder naming, the guarded task wrapper of the entry points, and sweep
callbacks (stop workers on SIGTERM, ensemble a sweep's runs)."""
