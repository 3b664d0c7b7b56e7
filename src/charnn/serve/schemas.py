"""What goes over the wire: request and response bodies, and errors in OpenAI's shape.

The pydantic models here are both the server's validation and its OpenAPI document (one
set of type hints). An error of any kind is `{"error": {"message", "type", "param", "code"}}`
(APIError). A sampling field's default and bounds are SampleConfig's (charnn.infer.sampling),
so a request without `temperature` samples as `charnn sample` does.

Imports: pydantic, starlette's JSONResponse, charnn.settings, charnn.infer.sampling (SampleConfig),
serve.config and serve.logprobs (its limit); nothing else of the server.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from charnn.infer.sampling import SampleConfig
from charnn.serve.config import ServeConfig
from charnn.serve.logprobs import MAX_LOGPROBS
from charnn.settings import default_of, meta

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_STOPS, MAX_STOP_CHARS = 4, 64  # OpenAI allows 4 stop strings; each is matched per character
RETRY_AFTER_S = 1  # the Retry-After of a 429 (queue full) and a 503 (timeout)


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


def validation_error(errors: list[dict]) -> APIError:
    """pydantic's list of errors (RequestValidationError.errors()) as one 400."""
    parts, params = [], []
    for e in errors:
        if e.get("type") == "json_invalid":  # its loc holds the offset of the mistake, not a field
            reason = e.get("ctx", {}).get("error", "cannot parse it")
            at = "".join(f" at character {x}" for x in e.get("loc", ()) if isinstance(x, int))
            parts.append(f"the body is not valid JSON ({reason}{at})")
            params.append(None)
            continue
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        params.append(".".join(loc) or None)
        parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg', 'invalid')}")
    message = "invalid request: " + "; ".join(parts[:5]) + (" ..." if len(parts) > 5 else "")
    return APIError(400, message, param=params[0] if params else None, code="invalid_value")


# --- request and response bodies (they also make the OpenAPI document) ------------------------
_Finite = Field(allow_inf_nan=False)


def sampling_default(name: str) -> Any:
    """The default of a sampling setting (a request that leaves it out, or sends null)."""
    return default_of(SampleConfig, name)


def _sampling_field(name: str, description: str) -> Any:
    """A request field with SampleConfig's default and bounds for `name`."""
    m = meta(next(f for f in fields(SampleConfig) if f.name == name))
    bounds = {k: m[k] for k in ("ge", "gt", "le", "lt") if m[k] is not None}
    return Field(sampling_default(name), description=description, **bounds)


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
    temperature: Annotated[float, _Finite] | None = _sampling_field("temperature", "0 = greedy")
    top_p: Annotated[float, _Finite] | None = _sampling_field("top_p", "nucleus sampling, 1 = off")
    top_k: int | None = _sampling_field("top_k", "sample from the k most likely characters, 0 = off")
    n: int | None = Field(1, ge=1, description="choices per prompt; choice i uses seed + i")
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOPS} strings that end a choice")
    seed: int | None = Field(None, ge=-(2**53), le=2**53,
                             description="the same seed gives the same text; none = random (|seed| <= 2^53, exact in JSON)")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    echo: bool | None = Field(False, description="put the prompt before the completion (with logprobs: and score it)")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description=(
        "return each character's log-probability under the model (before temperature, top-k and top-p) and "
        "the N most likely characters at its position; with echo, for the prompt's characters too (the first "
        "one's is null: it is read, not scored). null = none"))
    unknown: Literal["error", "skip", "replace"] = Field(
        "error", description="prompt characters outside the vocabulary: an error (400), dropped, or <unk>")
    # Accepted for compatibility; only their neutral values are supported.
    best_of: int | None = None
    suffix: str | None = None
    presence_penalty: Annotated[float, _Finite] | None = None
    frequency_penalty: Annotated[float, _Finite] | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        """(param, message) for each compatibility field sent with a value charnn cannot honour."""
        p = []
        if self.best_of not in (None, 1):
            p.append(("best_of", "best_of is not supported; leave it out or use n"))
        if self.suffix:
            p.append(("suffix", "suffix (insertion) is not supported by a left-to-right character model"))
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                p.append((name, f"{name} is not supported; leave it out or set 0"))
        if self.logit_bias:
            p.append(("logit_bias", "logit_bias is not supported; leave it out"))
        return p


class Logprobs(BaseModel):
    """OpenAI's legacy logprobs of a choice: one entry per character (serve/logprobs.py)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int] = Field(description="code points from the start of the prompt, echoed or not")


class Choice(BaseModel):
    text: str
    index: int
    logprobs: Logprobs | None = None
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
EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string", "description": "a JSON completion chunk, or [DONE] last"},
                   "event": {"type": "string"}},
    "required": ["data"],
}


def errors(*statuses: int) -> dict:
    """The `responses` of a route: these statuses answer with an ErrorResponse."""
    return {s: {"model": ErrorResponse} for s in statuses}


# --- what the JSON Schema of a request cannot know until the server starts --------------------
def document_limits(props: dict, models: list[str], config: ServeConfig) -> None:
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
    limit(props["best_of"], "integer", minimum=1, maximum=1)
    limit(props["suffix"], "string", maxLength=0)
    limit(props["presence_penalty"], "number", minimum=0, maximum=0)
    limit(props["frequency_penalty"], "number", minimum=0, maximum=0)
    limit(props["logit_bias"], "object", maxProperties=0)
