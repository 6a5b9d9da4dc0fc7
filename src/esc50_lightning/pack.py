"""``python -m esc50_lightning.pack``: forwards to ``commands/pack.py``, where the command lives."""

from esc50_lightning.commands.pack import main

if __name__ == "__main__":
    main()
