"""Progress for long work: a bar with ETA on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Report `fraction` done with some named figures.

    On a terminal the bar is redrawn in place (at most 10 times a second); otherwise a
    plain line is written every `every` seconds, so logs stay readable.
    """

    def __init__(self, stream: TextIO | None = None, every: float = 10.0, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every if not self.tty else 0.1
        self.enabled = enabled
        self.start = time.perf_counter()
        self.last = -1e9
        self.drawn = False

    def update(self, fraction: float, label: str, figures: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        fraction = min(max(fraction, 0.0), 1.0)
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")
        eta_s = format_duration(eta) if eta == eta else "--:--"
        if self.tty:
            width = 24
            filled = int(width * fraction)
            bar = "#" * filled + "-" * (width - filled)
            line = f"\r{label} [{bar}] {fraction:4.0%} {format_duration(elapsed)}<{eta_s} {figures}"
            self.stream.write(line[:160].ljust(80))
            self.drawn = True
        else:
            self.stream.write(f"{label} {fraction:4.0%} elapsed {format_duration(elapsed)} eta {eta_s} {figures}\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (an evaluation result, say), without breaking the bar."""
        if not self.enabled:
            return
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
