"""User-facing errors: one clear line, a non-zero exit, no traceback unless asked for."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from hydra.errors import InstantiationException

T = TypeVar("T")


class UserError(Exception):
    """A mistake in the user's data, config or command line; shown without a traceback."""


class CommandLineParser(argparse.ArgumentParser):
    """argparse for the commands: a command-line mistake is one ``error:`` line (not argparse's
    usage block first), exit status 2, as every other user mistake."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class DataError(UserError):
    """The dataset (CSV or audio files) has problems; ``problems`` lists every one found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"dataset check failed ({count}):\n" + "\n".join(f"  {p}" for p in problems))


def show_tracebacks() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("ESC50_FULL_ERROR") == "1"


def run_guarded(fn: Callable[[], T], on_error: Callable[[UserError], None] | None = None) -> T:
    """Run ``fn``; turn a ``UserError`` into ``error: ...`` on stderr and exit status 2.

    ``on_error(err)`` runs first (e.g. to note the error in the run's log and remove a run folder
    the failed command left empty). A
    ``UserError`` raised inside a constructor that ``hydra.utils.instantiate`` called arrives
    wrapped in Hydra's ``InstantiationException`` and is unwrapped here.
    """
    try:
        try:
            return fn()
        except InstantiationException as wrapped:
            if isinstance(wrapped.__cause__, UserError):
                raise wrapped.__cause__ from None
            raise
    except UserError as err:
        if show_tracebacks():
            raise
        if on_error is not None:
            on_error(err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
