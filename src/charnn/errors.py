"""The one exception type whose message is shown to users.

A `CharnnError` is a user mistake: a bad path, an empty corpus, a flag out of range, a
corrupt run directory. The CLI prints its message as one line on stderr and exits with
status 2. Anything else that escapes is a bug: a traceback and exit status 1.
"""

from __future__ import annotations


class CharnnError(Exception):
    """A problem the user can fix. The message names the flag or file, the value, and the fix."""


def check_all(problems: list[str]) -> None:
    """Raise one CharnnError that reports every problem at once (validate up front)."""
    if problems:
        raise CharnnError("; ".join(problems))
