"""Answering a completion: the engine's job read from the event loop, as one JSON body or as
server-sent events.

The engine thread fills a Job and wakes the loop (an asyncio.Event set thread-safely); a
reader takes what arrived, at most every FLUSH_S, until every choice has finished, the
client has gone or the request's time has run out. Either way the job is cancelled on the
way out, so its rows leave the batch.

    collect  -> {"id", "object": "text_completion", "created", "model", "choices", "usage", "seed"}
    events   -> data: {chunk}\\n\\n ... data: {usage chunk}\\n\\n (stream_options) data: [DONE]\\n\\n

Imports: serve.jobs (Job), serve.logprobs (a choice's logprobs) and serve.schemas (APIError);
starlette for the JSON response.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse

from charnn.serve.jobs import Job
from charnn.serve.logprobs import ChoiceLogprobs, empty, extend
from charnn.serve.schemas import RETRY_AFTER_S, APIError

# A reader takes what its choices produced at most this often: one event carries the
# characters of a few steps, so 32 streams cost the event loop 32 events per interval rather
# than 32 per step. 50 ms (20 updates a second) still reads as a smooth stream, and at 32
# streams it left the event loop enough of the GIL for ~20 % more characters per second than 20 ms.
FLUSH_S = 0.05


def _timeout_error(timeout: float) -> APIError:
    return APIError(503, f"the completion took longer than this server's limit of {timeout:g} s "
                    f"(charnn serve --timeout); ask for fewer characters or retry later",
                    "server_error", code="timeout", headers={"Retry-After": str(RETRY_AFTER_S)})


def _failed(job: Job) -> APIError:
    return APIError(500, job.error or "generation failed", "server_error")


async def _wait(wake: asyncio.Event, seconds: float, since: float) -> bool:
    """Wait for output (for at most `seconds`), and at least FLUSH_S after `since`."""
    loop = asyncio.get_running_loop()
    pause = since + FLUSH_S - loop.time()
    if pause > 0:
        await asyncio.sleep(min(pause, seconds))
    try:
        await asyncio.wait_for(wake.wait(), seconds)
    except asyncio.TimeoutError:
        return False
    wake.clear()
    return True


def _usage(job: Job) -> dict:
    return {"prompt_tokens": job.prompt_chars, "completion_tokens": job.generated,
            "total_tokens": job.prompt_chars + job.generated}


async def collect(job: Job, wake: asyncio.Event, request: Request, head: dict, n: int,
                  echo: list[str] | None, seed: int, deadline: float, timeout: float,
                  logprobs: list[ChoiceLogprobs] | None = None) -> JSONResponse:
    """Wait for every choice; give up if the client leaves or the time runs out. `logprobs`:
    one builder per choice when the request asked for them."""
    loop = asyncio.get_running_loop()
    texts = [echo[i // n] if echo else "" for i in range(job.choices)]
    finish: list[str | None] = [None] * job.choices
    last, check = -FLUSH_S, loop.time() + 0.25
    try:
        while None in finish:
            left = deadline - loop.time()
            if left <= 0:
                raise _timeout_error(timeout)
            await _wait(wake, min(left, 0.25), last)
            last = loop.time()
            if last >= check:  # a plain request notices a client that left only by asking
                if await request.is_disconnected():
                    return JSONResponse({}, status_code=499)  # nobody is listening
                check = last + 0.25
            for o in job.take():
                texts[o.index] += o.text
                if logprobs is not None and o.scores is not None:
                    logprobs[o.index].add(o.scores, o.prompt)
                if o.finish:
                    finish[o.index] = o.finish
            if "error" in finish:
                raise _failed(job)
    finally:
        job.cancel()
    choices = [{"text": t, "index": i, "logprobs": logprobs[i].all if logprobs else None, "finish_reason": f}
               for i, (t, f) in enumerate(zip(texts, finish))]
    return JSONResponse({**head, "object": "text_completion", "choices": choices,
                         "usage": _usage(job), "seed": seed})


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def events(job: Job, wake: asyncio.Event, head: dict, n: int, echo: list[str] | None,
                 usage: bool, deadline: float, timeout: float,
                 logprobs: list[ChoiceLogprobs] | None = None) -> AsyncIterator[str]:
    """Server-sent events: pieces that arrived together are sent as one chunk per choice, each
    with the logprobs of its characters when asked (an echoed prompt then goes with its own)."""
    loop = asyncio.get_running_loop()
    chunk = {**head, "object": "text_completion"}
    try:
        if echo and logprobs is None:
            for i in range(job.choices):
                yield _sse({**chunk, "choices": [{"text": echo[i // n], "index": i, "logprobs": None,
                                                  "finish_reason": None}]})
        open_choices = job.choices
        last = -FLUSH_S  # the first characters go out at once
        while open_choices:
            left = deadline - loop.time()
            if left <= 0:
                yield _sse(_timeout_error(timeout).body())
                return
            if not await _wait(wake, left, last):
                continue
            last = loop.time()
            merged: dict[int, list] = {}
            for o in job.take():
                m = merged.setdefault(o.index, ["", None, None if logprobs is None else empty()])
                m[0] += (echo[o.index // n] if o.prompt else "") + o.text
                m[1] = o.finish or m[1]
                if logprobs is not None and o.scores is not None:
                    extend(m[2], logprobs[o.index].add(o.scores, o.prompt))
            for i, (text, fin, lp) in merged.items():
                if fin == "error":
                    yield _sse(_failed(job).body())
                    return
                open_choices -= fin is not None
                yield _sse({**chunk, "choices": [{"text": text, "index": i, "logprobs": lp,
                                                  "finish_reason": fin}]})
        if usage:
            yield _sse({**chunk, "choices": [], "usage": _usage(job)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # the client went away, the time ran out, or it finished: free the rows
