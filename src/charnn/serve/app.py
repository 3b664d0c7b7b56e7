"""`charnn serve`: an OpenAI-compatible HTTP API over trained runs, and a playground page.

    GET  /                    the playground (static/index.html: one page, no CDN, no build step)
    GET  /health              {"status": "ok", "active": streams running, "queued": streams waiting,
                               "generated": characters generated since start}
    GET  /v1/models           the loaded runs; a model's id is its run directory's name
    GET  /v1/models/{id}
    POST /v1/completions      OpenAI's legacy completions API; a token is a character;
                              "stream": true answers with server-sent events ending "data: [DONE]"
    GET  /openapi.json        the OpenAPI document

Built on FastAPI (request validation and the OpenAPI document from one set of type hints)
on uvicorn. Generation runs in engine.py: one thread per model steps every active stream
in one batch. This module only validates, queues, streams and maps errors to OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`: a client mistake is a 4xx, never a 5xx.

Safe by default: it binds 127.0.0.1; with an API key every /v1 route needs
`Authorization: Bearer KEY`; bodies, prompts, lengths, choices, concurrency, the queue and
the time per request are all bounded (ServeConfig, one flag each).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from charnn.errors import CharnnError, check_all
from charnn.infer.model import CharModel
from charnn.infer.model import load as load_model
from charnn.serve.config import ServeConfig
from charnn.serve.engine import Engine, Job, QueueFull, Sampling

log = logging.getLogger("charnn.server")

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_STOPS, MAX_STOP_CHARS = 4, 64  # OpenAI allows 4 stop strings; each is matched per character
RETRY_AFTER_S = 1
# A reader takes what its choices produced at most this often: one event carries the
# characters of a few steps, so 32 streams cost the event loop 32 events per interval rather
# than 32 per step. 50 ms (20 updates a second) still reads as a smooth stream, and at 32
# streams it left the event loop enough of the GIL for ~20 % more characters per second than 20 ms.
FLUSH_S = 0.05


# --- errors in OpenAI's shape -----------------------------------------------------------------
class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# --- request and response bodies (they also make the OpenAPI document) ------------------------
_Finite = Field(allow_inf_nan=False)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """OpenAI's completion request. `top_k` and `unknown` are charnn's own additions.

    Strict: a value must have the JSON type the document says (no "5" for 5, no 1.0 for an
    integer, no 1 for true), so what the OpenAPI document rejects, the server rejects.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(description="a model id from /v1/models (a run directory's name)")
    prompt: str | list[str] = Field("", description="text to continue, or a list of them")
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, ge=0, description="characters to generate per choice")
    temperature: Annotated[float, _Finite] | None = Field(1.0, ge=0, description="0 = greedy")
    top_p: Annotated[float, _Finite] | None = Field(1.0, gt=0, le=1, description="nucleus sampling, 1 = off")
    top_k: int | None = Field(0, ge=0, description="sample from the k most likely characters, 0 = off")
    n: int | None = Field(1, ge=1, description="choices per prompt; choice i uses seed + i")
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOPS} strings that end a choice")
    seed: int | None = Field(None, ge=-(2**53), le=2**53,
                             description="the same seed gives the same text; none = random (|seed| <= 2^53, exact in JSON)")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    echo: bool | None = Field(False, description="put the prompt before the completion")
    unknown: Literal["error", "skip", "replace"] = Field(
        "error", description="prompt characters outside the vocabulary: an error (400), dropped, or <unk>")
    # Accepted for compatibility; only their neutral values are supported.
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    presence_penalty: Annotated[float, _Finite] | None = None
    frequency_penalty: Annotated[float, _Finite] | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class Choice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    seed: int = Field(description="the seed used (charnn's addition): pass it to get the same text again")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "charnn"
    charnn: dict[str, Any] = Field(description="the run: architecture, size, step, validation loss")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# One server-sent event, as OpenAPI 3.1 documents an event stream (a schema per event).
_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string", "description": "a JSON completion chunk, or [DONE] last"},
                   "event": {"type": "string"}},
    "required": ["data"],
}


def _errors(*statuses: int) -> dict:
    return {s: {"model": ErrorResponse} for s in statuses}


# --- the guard: authentication and body size, before anything parses the request --------------
class _Guard:
    """ASGI middleware: 401 without the API key on /v1, 413 for bodies over the limit.

    It runs before routing and JSON parsing, so an unauthenticated client learns nothing
    about the request it sent, and an oversized body is never buffered beyond the limit.
    """

    def __init__(self, app, api_key: str | None, max_body: int) -> None:
        self.app, self.max_body = app, max_body
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        path = scope["path"]
        if self.key is not None and (path == "/v1" or path.startswith("/v1/")):
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key):
                err = APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' "
                               "with the key charnn serve was started with", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
                return await err.response()(scope, receive, send)
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_big = APIError(413, f"request body is larger than the server's limit of {self.max_body} bytes "
                           f"(charnn serve --max-body)", code="request_too_large")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await APIError(400, f"bad Content-Length header {length!r}").response()(scope, receive, send)
            if int(length) > self.max_body:
                return await too_big.response()(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                return await too_big.response()(scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the disconnect, for streaming responses

        await self.app(scope, replay, send)


# --- the app ------------------------------------------------------------------------------------
@dataclass
class _Served:
    id: str
    model: CharModel
    engine: Engine
    card: dict


def _engine(model: CharModel, config: ServeConfig) -> Engine:
    """The model's engine: its fast stepper, the text of each id (special tokens are ''), the ids
    never to sample."""
    texts = [model.vocab.decode([i]) for i in range(model.vocab.size)]
    return Engine(model.stepper, texts, model.banned, config.max_batch, config.max_queue)


def _card(model_id: str, model: CharModel) -> dict:
    weights = Path(model.run_dir) / "model.safetensors"
    cfg = model.config
    return {
        "id": model_id,
        "object": "model",
        "created": int(weights.stat().st_mtime) if weights.exists() else 0,
        "owned_by": "charnn",
        "charnn": {
            "architecture": cfg.model, "layers": cfg.layers, "hidden": cfg.hidden,
            "vocab_size": cfg.vocab_size,
            "parameters": sum(p.numel() for p in model.model.parameters()),
            "step": model.info.get("step"), "val_loss": model.info.get("val_loss"),
        },
    }


def _validation_error(exc: RequestValidationError) -> APIError:
    parts, params = [], []
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        params.append(".".join(loc) or None)
        parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg', 'invalid')}")
    message = "invalid request: " + "; ".join(parts[:5]) + (" ..." if len(parts) > 5 else "")
    return APIError(400, message, param=params[0] if params else None, code="invalid_value")


def _unsupported(req: CompletionRequest) -> list[tuple[str, str]]:
    p = []
    if req.logprobs:
        p.append(("logprobs", "logprobs are not returned by charnn; leave logprobs out"))
    if req.best_of not in (None, 1):
        p.append(("best_of", "best_of is not supported; leave it out or use n"))
    if req.suffix:
        p.append(("suffix", "suffix (insertion) is not supported by a left-to-right character model"))
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            p.append((name, f"{name} is not supported; leave it out or set 0"))
    if req.logit_bias:
        p.append(("logit_bias", "logit_bias is not supported; leave it out"))
    return p


def create_app(models: dict[str, CharModel], config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving `models` (id -> loaded run). Engines start with the app's lifespan."""
    config = config or ServeConfig()
    check_all(config.problems())
    served = {mid: _Served(mid, m, _engine(m, config), _card(mid, m)) for mid, m in models.items()}
    page = (resources.files("charnn.serve") / "static" / "index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app):
        for s in served.values():
            s.engine.start()
        try:
            yield
        finally:
            for s in served.values():
                s.engine.close()

    app = FastAPI(
        title="charnn", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
        description="OpenAI-compatible completions from character-level recurrent language models.",
    )
    app.add_middleware(_Guard, api_key=config.api_key, max_body=config.max_body)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return APIError(exc.status_code, str(exc.detail), kind, code=code,
                        headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("internal error")
        return APIError(500, f"internal error: {type(exc).__name__}", "server_error").response()

    @app.get("/", include_in_schema=False)
    async def playground():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/health", summary="Liveness and load")
    async def health():
        return {
            "status": "ok",
            "models": len(served),
            "active": sum(s.engine.active for s in served.values()),
            "queued": sum(s.engine.queued for s in served.values()),
            "generated": sum(s.engine.generated for s in served.values()),
        }

    def lookup(model_id: str) -> _Served:
        s = served.get(model_id)
        if s is None:
            raise APIError(404, f"model {model_id!r} is not served here; the models are: "
                           f"{', '.join(served)} (GET /v1/models)", param="model", code="model_not_found")
        return s

    @app.get("/v1/models", response_model=ModelList, responses=_errors(401))
    async def list_models():
        return {"object": "list", "data": [s.card for s in served.values()]}

    @app.get("/v1/models/{model_id}", response_model=ModelCard, responses=_errors(401, 404))
    async def get_model(model_id: str):
        return lookup(model_id).card

    @app.post(
        "/v1/completions", response_model=Completion,
        responses={
            200: {"content": {"text/event-stream": {"schema": _EVENT}},
                  "description": "a completion, or with stream: server-sent events ending 'data: [DONE]'"},
            **_errors(400, 401, 404, 413, 429, 503),
        },
    )
    async def completions(req: CompletionRequest, request: Request):
        s = lookup(req.model)
        prompts, ids, sampling, n = _check(req, s, config)
        seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        try:
            job = s.engine.submit(ids, n, sampling, seed, lambda: loop.call_soon_threadsafe(wake.set))
        except QueueFull as e:
            raise APIError(429, f"the server is busy ({e}); retry after {RETRY_AFTER_S} s, or start charnn "
                           f"serve with a larger --max-queue", "rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": s.id}
        deadline = loop.time() + config.timeout
        echo = prompts if req.echo else None
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _events(job, wake, head, n, echo, usage, deadline, config.timeout),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _collect(job, wake, request, head, n, echo, seed, deadline, config.timeout)

    original_openapi = app.openapi

    def openapi():  # the models served, and the Guard's key check, go into the document
        first = app.openapi_schema is None
        schema = original_openapi()
        if first:
            _document_limits(schema["components"]["schemas"]["CompletionRequest"]["properties"],
                             list(served), config)
        if first and config.api_key:
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, ops in schema["paths"].items():
                if path.startswith("/v1/"):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}]
        return schema

    app.openapi = openapi
    app.state.engines = {mid: s.engine for mid, s in served.items()}
    return app


def _document_limits(props: dict, models: list[str], config: ServeConfig) -> None:
    """Put the served models and this server's limits into the request's JSON Schema."""

    def limit(prop: dict, kind: str, **keywords) -> None:
        for branch in prop.get("anyOf", [prop]):
            if branch.get("type") == kind:
                branch.update(keywords)

    props["model"]["enum"] = models
    limit(props["max_tokens"], "integer", maximum=config.max_tokens)
    limit(props["n"], "integer", maximum=config.max_n)
    limit(props["prompt"], "string", maxLength=config.max_prompt)
    limit(props["prompt"], "array", minItems=1, maxItems=config.max_n)
    for branch in props["prompt"]["anyOf"]:
        if branch.get("type") == "array":
            branch["items"]["maxLength"] = config.max_prompt
    limit(props["stop"], "string", maxLength=MAX_STOP_CHARS)
    limit(props["stop"], "array", maxItems=MAX_STOPS)
    for branch in props["stop"]["anyOf"]:
        if branch.get("type") == "array":
            branch["items"]["maxLength"] = MAX_STOP_CHARS
    # Accepted for compatibility, with their neutral values only.
    limit(props["logprobs"], "integer", minimum=0, maximum=0)
    limit(props["best_of"], "integer", minimum=1, maximum=1)
    limit(props["suffix"], "string", maxLength=0)
    limit(props["presence_penalty"], "number", minimum=0, maximum=0)
    limit(props["frequency_penalty"], "number", minimum=0, maximum=0)
    limit(props["logit_bias"], "object", maxProperties=0)


def _version() -> str:
    from charnn import __version__

    return __version__


def _check(req: CompletionRequest, s: _Served, config: ServeConfig):
    """Every problem of a request that the schema cannot see, reported at once as one 400."""
    problems: list[tuple[str, str]] = _unsupported(req)
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    n = req.n if req.n is not None else 1
    max_tokens = req.max_tokens if req.max_tokens is not None else DEFAULT_MAX_TOKENS
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if not prompts:
        problems.append(("prompt", "prompt is an empty list; send a string or a list of strings"))
    if len(prompts) * n > config.max_n:
        problems.append(("n", f"n x prompts = {n} x {len(prompts)} choices is over this server's limit of "
                              f"{config.max_n} (charnn serve --max-n)"))
    if max_tokens > config.max_tokens:
        problems.append(("max_tokens", f"max_tokens {max_tokens} is over this server's limit of "
                                       f"{config.max_tokens} characters (charnn serve --max-tokens)"))
    if len(stops) > MAX_STOPS or any(len(x) > MAX_STOP_CHARS for x in stops):
        problems.append(("stop", f"stop takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} "
                                 f"characters each"))
    long = [i for i, p in enumerate(prompts) if len(p) > config.max_prompt]
    if long:
        problems.append(("prompt", f"prompt {long[0]} has {len(prompts[long[0]]):,} characters, over this "
                                   f"server's limit of {config.max_prompt:,} (charnn serve --max-prompt)"))
    ids = []
    if not problems:
        for i, p in enumerate(prompts):
            try:
                ids.append(s.model.prime_ids(p, req.unknown))
            except CharnnError as e:
                bad = s.model.vocab.unknown_chars(p)
                if bad and req.unknown == "error":
                    shown = ", ".join(repr(c) for c in bad[:20]) + (" ..." if len(bad) > 20 else "")
                    msg = (f"prompt {i} has {len(bad)} character(s) outside the vocabulary of model "
                           f"{s.id!r}: {shown}; remove them, or send \"unknown\": \"skip\" (drop them) "
                           f"or \"unknown\": \"replace\" (map them to <unk>)")
                    problems.append(("prompt", msg))
                else:
                    problems.append(("prompt", f"prompt {i}: {e}"))
    if problems:
        code = "context_length_exceeded" if any("characters, over" in m for _, m in problems) else "invalid_value"
        raise APIError(400, "; ".join(m for _, m in problems), param=problems[0][0], code=code)
    temperature = req.temperature if req.temperature is not None else 1.0
    if temperature < 1e-6:
        temperature = 0.0  # logits / t would overflow float32: at this temperature sampling is argmax
    sampling = Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=min(req.top_k or 0, s.model.vocab.size),  # k >= V is "off", and fits an int64
        top_p=req.top_p if req.top_p is not None else 1.0,
        stop=tuple(stops),
    )
    return prompts, ids, sampling, n


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


async def _collect(job, wake, request, head, n, echo, seed, deadline, timeout) -> JSONResponse:
    """Wait for every choice; give up if the client leaves or the time runs out."""
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
                if o.finish:
                    finish[o.index] = o.finish
            if "error" in finish:
                raise _failed(job)
    finally:
        job.cancel()
    choices = [{"text": t, "index": i, "logprobs": None, "finish_reason": f}
               for i, (t, f) in enumerate(zip(texts, finish))]
    return JSONResponse({**head, "object": "text_completion", "choices": choices,
                         "usage": _usage(job), "seed": seed})


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _events(job, wake, head, n, echo, usage, deadline, timeout):
    """Server-sent events: pieces that arrived together are sent as one chunk per choice."""
    loop = asyncio.get_running_loop()
    chunk = {**head, "object": "text_completion"}
    try:
        if echo:
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
                m = merged.setdefault(o.index, ["", None])
                m[0] += o.text
                m[1] = o.finish or m[1]
            for i, (text, fin) in merged.items():
                if fin == "error":
                    yield _sse(_failed(job).body())
                    return
                open_choices -= fin is not None
                yield _sse({**chunk, "choices": [{"text": text, "index": i, "logprobs": None,
                                                  "finish_reason": fin}]})
        if usage:
            yield _sse({**chunk, "choices": [], "usage": _usage(job)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # the client went away, the time ran out, or it finished: free the rows


# --- running it -----------------------------------------------------------------------------------
def model_ids(run_dirs: Sequence[str]) -> dict[str, Path]:
    """Model id -> run directory. An id is the directory's name; ID=RUN_DIR chooses another."""
    ids: dict[str, Path] = {}
    problems = []
    for arg in run_dirs:
        name, sep, path = arg.partition("=")
        if sep and name and not Path(arg).exists():
            mid, run = name, Path(path)
        else:
            run = Path(arg)
            mid = run.resolve().name
        if mid in ids:
            problems.append(f"two runs would both be model {mid!r} ({ids[mid]} and {run}); name them with "
                            f"ID=RUN_DIR, e.g. {mid}2={run}")
        ids[mid] = run
    check_all(problems)
    return ids


def load_models(
    run_dirs: Sequence[str], device: str = "cpu", backend: str = "auto", quantize: str = "none"
) -> dict[str, CharModel]:
    """Load every run once, through the checkpoint module, with its sampling engine."""
    return {mid: load_model(run, device, backend, quantize) for mid, run in model_ids(run_dirs).items()}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The loud warning printed when the server is reachable from other machines."""
    if is_loopback(host):
        return None
    bar = "!" * 78
    lines = [bar, f"WARNING: charnn serve is listening on {host}: other machines can reach it.",
             "It speaks plain HTTP (no TLS): put it behind a reverse proxy with TLS for real use."]
    if api_key is None:
        lines.append("There is NO API KEY: anyone who can reach this port can use it. Pass --api-key.")
    return "\n".join([*lines, bar])


def open_socket(host: str, port: int) -> socket.socket:
    """A listening socket; a port in use (or a bad host) is a CharnnError, not a traceback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CharnnError(f"--host {host}: cannot resolve it ({e.strerror}); pass an address such as 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == 98 or "in use" in str(e):
            raise CharnnError(f"--port {port}: address {host}:{port} is already in use; stop the other "
                              f"server or pass another --port") from None
        raise CharnnError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app, quiet: bool):
    import uvicorn

    cfg = uvicorn.Config(app, log_level="warning" if quiet else "info", access_log=not quiet,
                         timeout_graceful_shutdown=5, lifespan="on")
    return uvicorn.Server(cfg)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def serve(run_dirs: Sequence[str], config: ServeConfig, quiet: bool = False) -> None:
    """Load the runs, listen, and serve until Ctrl-C."""
    check_all(config.problems())
    if config.threads:
        torch.set_num_threads(config.threads)  # before loading: ONNX Runtime sessions take it too
    models = load_models(run_dirs, config.device, config.backend, config.quantize)
    app = create_app(models, config)
    sock = open_socket(config.host, config.port)
    warning = exposure_warning(config.host, config.api_key)
    if warning:
        print(warning, file=sys.stderr)
    url = url_of(sock)
    print(f"charnn serve: {len(models)} model(s) ({', '.join(models)}) on {url}: playground {url}/, "
          f"API {url}/v1{' (API key required)' if config.api_key else ''}", file=sys.stderr, flush=True)
    try:
        _uvicorn_server(app, quiet).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down cleanly and re-raised the signal
        pass
    finally:
        sock.close()
    print("charnn serve: stopped", file=sys.stderr)


@contextmanager
def background_server(
    models: dict[str, CharModel], config: ServeConfig | None = None, quiet: bool = True
) -> Iterator[str]:
    """Serve `models` from a background thread on 127.0.0.1 and a free port; yields the base URL.

    For tests, benchmarks and notebooks:

        with background_server({"mine": charnn.load("runs/mine")}) as url:
            ...  # OpenAI(base_url=url + "/v1", api_key="-")
    """
    config = config or ServeConfig(port=0)
    app = create_app(models, config)
    sock = open_socket(config.host, config.port)
    server = _uvicorn_server(app, quiet)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
