"""``python -m esc50_lightning.predict``: forwards to ``commands/predict.py``, where the command lives."""

from esc50_lightning.commands.predict import main

if __name__ == "__main__":
    main()
