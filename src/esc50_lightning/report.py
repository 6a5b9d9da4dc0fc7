"""``python -m esc50_lightning.report``: forwards to ``commands/report.py``, where the command lives."""

from esc50_lightning.commands.report import main

if __name__ == "__main__":
    main()
