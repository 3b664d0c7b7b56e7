"""What a caller hands the engine and what it reads back: Sampling in, a Job of Outputs out.

A Job is one request's choices. The engine thread puts each choice's text into it piece by
piece; the caller (the HTTP server, or any thread) takes what is ready with `Job.take()`,
woken by the `on_ready` callback, and cancels the job when it stops listening (the engine
hears of it at once, through `on_cancel`). The lock makes put and take safe across the two
threads; nothing else is shared.

Imports: charnn.settings and charnn.infer.sampling (SampleConfig's defaults).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from charnn.infer.sampling import SampleConfig
from charnn.settings import default_of


class QueueFull(Exception):
    """The engine has no room for the request's streams: try again later."""


@dataclass(frozen=True)
class Sampling:
    """How each choice of a request is generated. max_tokens counts characters; the sampling
    settings default as SampleConfig's."""

    max_tokens: int
    temperature: float = default_of(SampleConfig, "temperature")
    top_k: int = default_of(SampleConfig, "top_k")
    top_p: float = default_of(SampleConfig, "top_p")
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # score each generated character, with this many alternatives; None = no
    score_prompt: bool = False  # score the prompt too (echo with logprobs)


@dataclass(slots=True)
class Output:
    """A piece of one choice's text; `finish` is set on its last piece."""

    index: int
    text: str
    finish: str | None = None  # "stop" | "length" | "error"
    # The characters of `text` scored (logprobs.TokenScore each), when the request asked for
    # logprobs; with `prompt` they are the prompt's instead (its text is the caller's to echo).
    scores: list | None = None
    prompt: bool = False


class Job:
    """The choices of one request, filled by the engine thread, read by the caller."""

    def __init__(self, choices: int, prompt_chars: int, on_ready: Callable[[], None] | None) -> None:
        self.choices = choices
        self.prompt_chars = prompt_chars
        self.generated = 0  # characters stepped for this job (its usage), all choices
        self.error: str | None = None
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self._items: list[Output] = []
        self.cancelled = False
        self.on_cancel: Callable[[Job], None] | None = None  # set by the engine: leave its queue

    # --- the caller's side ----------------------------------------------------------------
    def take(self) -> list[Output]:
        """The outputs produced since the last call, in order."""
        with self._lock:
            items, self._items = self._items, []
        return items

    def cancel(self) -> None:
        """Stop generating for this job: its choices still waiting leave the queue now (they
        no longer count against it), its rows leave the batch at the next step."""
        if self.cancelled:
            return
        self.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel(self)

    # --- the engine's side ----------------------------------------------------------------
    def put(self, items: list[Output]) -> None:
        with self._lock:
            wake = not self._items  # wake the reader once, not for every piece it has not taken
            self._items.extend(items)
        if wake and self._on_ready is not None:
            self._on_ready()

    def fail(self, message: str, open_indices: Sequence[int]) -> None:
        """Finish the choices still open with an error."""
        self.error = message
        self.put([Output(i, "", "error") for i in open_indices])
