"""``python -m esc50_lightning.pack``: parses the command line, then runs ``commands/pack.py``,
where the command lives (heavy imports only after the arguments are good: commands/arguments.py)."""

from esc50_lightning.commands.arguments import forward

if __name__ == "__main__":
    forward("pack")
