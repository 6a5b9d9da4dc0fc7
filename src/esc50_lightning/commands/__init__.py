"""The user commands that are not Hydra tasks: predict, export, pack, report (runs and searches) and
cache. Each is ``python -m esc50_lightning.<command>``; the modules of that name beside this folder
only forward to ``main`` here."""
