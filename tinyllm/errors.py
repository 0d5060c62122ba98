"""The one exception type that means "the user asked for something we cannot do", and how entry points end on it."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator


class UserError(Exception):
    """Bad input: the CLI prints the message on one line and exits with status 2, without a traceback.

    The message names the flag or file, says what is wrong and what to do about it.
    """


class OneLineParser(argparse.ArgumentParser):
    """An entry point's argparse parser whose errors are one line and exit status 2: argparse's usage block
    spans a screen for this many flags. `help_command` is how the user asks for --help (default: prog)."""

    def __init__(self, *args, help_command: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.help_command = help_command or self.prog

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.help_command} --help)\n")


@contextlib.contextmanager
def exits_cleanly() -> Iterator[None]:
    """For an entry point's main(): a UserError becomes its message on one line and exit status 2, Ctrl+C exit
    status 130, neither with a traceback."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
