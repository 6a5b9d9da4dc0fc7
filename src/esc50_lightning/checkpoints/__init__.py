"""Checkpoint files: written atomically (``io``), read and rebuilt into a trained model (``record``)."""
