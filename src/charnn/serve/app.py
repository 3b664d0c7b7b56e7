"""`charnn serve`: an OpenAI-compatible HTTP API over trained runs, and a playground page.

    GET  /                    the playground (static/index.html: one page, no CDN, no build step)
    GET  /health              {"status": "ok", "active": streams running, "queued": streams waiting,
                               "generated": characters generated since start}
    GET  /v1/models           the loaded runs; a model's id is its run directory's name
    GET  /v1/models/{id}
    POST /v1/completions      OpenAI's legacy completions API; a token is a character;
                              "stream": true answers with server-sent events ending "data: [DONE]";
                              "logprobs": N (0-5) scores each character (with "echo", the prompt's
                              too: "max_tokens": 0 then scores a text)
    GET  /openapi.json        the OpenAPI document (it lists the models: with a key, it needs it)

This module owns create_app: the routes, the checks a request needs beyond its schema, and
the mapping of every error to OpenAI's shape (a client mistake is a 4xx, never a 5xx). The
rest of the server is one module per story:

    schemas.py   request/response bodies (and the OpenAPI document), APIError
    guard.py     Host, API key and body size, before anything parses a request
    jobs.py      Sampling in, a Job of Outputs out: what this side and the engine share
    engine.py    generation: one thread per model steps every active stream in one batch
    replies.py   a job's outputs as one JSON body or as server-sent events
    logprobs.py  log-probabilities: what the engine computes, in OpenAI's shape
    run.py       serve() and background_server(): sockets, uvicorn, the exposure warning

Safe by default: it binds 127.0.0.1 and then answers only to loopback names (--allowed-hosts);
with an API key every route but / and /health needs `Authorization: Bearer KEY`; bodies,
prompts, lengths, choices, concurrency, the queue and the time per request are all bounded
(ServeConfig, one flag each).

Imports: FastAPI, charnn.errors, charnn.infer.model (CharModel, the loaded run), the serve modules.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from charnn.errors import CharnnError, check_all
from charnn.infer.model import CharModel
from charnn.infer.sampling import seed_or_random
from charnn.serve.config import ServeConfig
from charnn.serve.engine import Engine
from charnn.serve.guard import Guard
from charnn.serve.jobs import QueueFull, Sampling
from charnn.serve.logprobs import ChoiceLogprobs, prompt_tokens
from charnn.serve.replies import collect, events
from charnn.serve.schemas import (
    DEFAULT_MAX_TOKENS,
    EVENT,
    MAX_STOP_CHARS,
    MAX_STOPS,
    RETRY_AFTER_S,
    APIError,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
    document_limits,
    errors,
    sampling_default,
    validation_error,
)

log = logging.getLogger("charnn.server")


@dataclass
class _Served:
    id: str
    model: CharModel
    engine: Engine
    card: dict
    texts: list[str]  # the text of each id (special tokens are '')


def _served(model_id: str, model: CharModel, config: ServeConfig) -> _Served:
    """The model's engine (its fast stepper, the text of each id, the ids never to sample) and card."""
    texts = [model.vocab.decode([i]) for i in range(model.vocab.size)]
    engine = Engine(model.stepper, texts, model.banned, config.max_batch, config.max_queue, end=model.end)
    return _Served(model_id, model, engine, _card(model_id, model), texts)


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
            # A documents run completes one document per choice: the prompt is its beginning.
            "documents": model.documents.format if model.documents is not None else None,
        },
    }


def create_app(models: dict[str, CharModel], config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving `models` (id -> loaded run). Engines start with the app's lifespan."""
    config = config or ServeConfig()
    check_all(config.problems())
    served = {mid: _served(mid, m, config) for mid, m in models.items()}
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
    app.add_middleware(Guard, api_key=config.api_key, max_body=config.max_body, hosts=config.host_allow_list())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return validation_error(exc.errors()).response()

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

    @app.get("/v1/models", response_model=ModelList, responses=errors(401))
    async def list_models():
        return {"object": "list", "data": [s.card for s in served.values()]}

    @app.get("/v1/models/{model_id}", response_model=ModelCard, responses=errors(401, 404))
    async def get_model(model_id: str):
        return lookup(model_id).card

    @app.post(
        "/v1/completions", response_model=Completion,
        responses={
            200: {"content": {"text/event-stream": {"schema": EVENT}},
                  "description": "a completion, or with stream: server-sent events ending 'data: [DONE]'"},
            **errors(400, 401, 404, 413, 429, 503),
        },
    )
    async def completions(req: CompletionRequest, request: Request):
        s = lookup(req.model)
        prompts, ids, sampling, n = _check(req, s, config)
        seed = seed_or_random(req.seed)
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
        logprobs = _logprobs(req, s, prompts, n)
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                events(job, wake, head, n, echo, usage, deadline, config.timeout, logprobs),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await collect(job, wake, request, head, n, echo, seed, deadline, config.timeout, logprobs)

    original_openapi = app.openapi

    def openapi():  # the models served, and the Guard's key check, go into the document
        first = app.openapi_schema is None
        schema = original_openapi()
        if first:
            document_limits(schema["components"]["schemas"]["CompletionRequest"]["properties"],
                            list(served), config)
        if first and config.api_key:
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, ops in schema["paths"].items():
                if path.startswith("/v1/"):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}]
        return schema

    app.openapi = openapi
    return app


def _version() -> str:
    from charnn import __version__

    return __version__


def _logprobs(req: CompletionRequest, s: _Served, prompts: list[str], n: int) -> list[ChoiceLogprobs] | None:
    """A logprobs builder per choice (choice p * n + i continues prompt p), if the request asked."""
    if req.logprobs is None:
        return None
    tokens = [prompt_tokens(s.model.vocab, p, req.unknown) for p in prompts]
    return [ChoiceLogprobs(s.texts, prompts[c // n], *tokens[c // n]) for c in range(len(prompts) * n)]


def _check(req: CompletionRequest, s: _Served, config: ServeConfig):
    """Every problem of a request that the schema cannot see, reported at once as one 400."""
    problems: list[tuple[str, str]] = req.unsupported()
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

    def given(name: str):  # a sampling setting left out (or null) takes SampleConfig's default
        value = getattr(req, name)
        return value if value is not None else sampling_default(name)

    temperature = given("temperature")
    if temperature < 1e-6:
        temperature = 0.0  # logits / t would overflow float32: at this temperature sampling is argmax
    sampling = Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=min(given("top_k"), s.model.vocab.size),  # k >= V is "off", and fits an int64
        top_p=given("top_p"),
        stop=tuple(stops),
        logprobs=req.logprobs,
        score_prompt=bool(req.echo) and req.logprobs is not None,
    )
    return prompts, ids, sampling, n
