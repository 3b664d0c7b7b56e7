"""The one exception type whose message is shown to users.

A `CharnnError` is a user mistake: a bad path, an empty corpus, a flag out of range, a
corrupt run directory. The CLI prints its message as one line on stderr and exits with
status 2. Anything else that escapes is a bug: a traceback and exit status 1.
"""

from __future__ import annotations

# Line breaks that a value quoted in a message may carry (a path, a setting read from a file):
# shown escaped, so that every message stays one line.
_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


class CharnnError(Exception):
    """A problem the user can fix. The message names the flag or file, the value, and the fix.
    It is always one line: line breaks in it are escaped."""

    def __init__(self, message: str = "") -> None:
        super().__init__(str(message).translate(_BREAKS))


def check_all(problems: list[str]) -> None:
    """Raise one CharnnError that reports every problem at once (validate up front)."""
    if problems:
        raise CharnnError("; ".join(problems))
