"""What every subcommand's module shares: the parser that reports a mistake in one line, and
the settings a user gave. Imports errors only."""

from __future__ import annotations

import argparse
import sys

from charnn.errors import CharnnError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise CharnnError(f"{message} (see {self.prog} --help)")


def given_settings(args, *besides: str) -> dict:
    """The settings the user gave: the parsed flags, less the command's own arguments."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "command", *besides)}


def write_stream(pieces) -> str:
    """Write the pieces as they come; the text they make."""
    written = []
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
        written.append(piece)
    return "".join(written)
