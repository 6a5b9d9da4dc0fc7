"""``python -m esc50_lightning.cache``: forwards to ``commands/cache.py``, where the command lives."""

from esc50_lightning.commands.cache import main

if __name__ == "__main__":
    main()
