"""``python -m esc50_lightning.export``: forwards to ``commands/export.py``, where the command lives."""

from esc50_lightning.commands.export import main

if __name__ == "__main__":
    main()
