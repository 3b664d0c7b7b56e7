"""The door of the server: the Host, the API key and the body size, checked before anything
parses a request.

Guard is ASGI middleware around the whole app. It runs before routing and JSON parsing:

    Host not allowed (ServeConfig.host_allow_list)   400 host_not_allowed, on every route: a web
                                                     page cannot reach a local server through a
                                                     name it made point here (DNS rebinding)
    with an API key, no `Authorization: Bearer KEY`  401 on every route but the page (/) and
                                                     /health, the OpenAPI document included (it
                                                     lists the models); the client learns nothing
                                                     about the request it sent
    a body over --max-body                           413, never buffered beyond the limit

Imports: starlette's Headers, serve.config (host_name) and serve.schemas (APIError, for the
errors' shape).
"""

from __future__ import annotations

import hashlib
import hmac
import re

from starlette.datastructures import Headers

from charnn.serve.config import host_name
from charnn.serve.schemas import APIError

PUBLIC = ("/", "/health")  # the only routes answered without the key: neither names a model


def _digest(secret: bytes) -> bytes:
    # Compared as digests of equal length, so the comparison's time tells nothing of the key,
    # not even its length.
    return hashlib.sha256(secret).digest()


# A Host header: a name, an IPv4 address or a bracketed IPv6 address, then perhaps ":port".
_HOST = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(?::[0-9]*)?")


def _host(header: str) -> str | None:
    """The name in a Host header, as host_name compares it (None if the header is malformed)."""
    m = _HOST.fullmatch(header.strip())
    return host_name(m.group(1)) if m else None


class Guard:
    """ASGI middleware: 400 for a Host not allowed, 401 without the API key, 413 for bodies
    over the limit."""

    def __init__(self, app, api_key: str | None, max_body: int, hosts: frozenset[str] | None = None) -> None:
        """`hosts`: the Host names answered (ServeConfig.host_allow_list; None = any)."""
        self.app, self.max_body, self.hosts = app, max_body, hosts
        # The key as the bytes a client sends (ServeConfig allows only printable ASCII).
        self.key = _digest(api_key.encode("ascii")) if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host")
        # No Host at all (HTTP/1.0) is no browser's request, so no rebinding: let it through.
        if self.hosts is not None and host is not None and (name := _host(host)) not in self.hosts:
            told = f"the host name {name!r}" if name else "a malformed Host header"  # never echo what fails
            err = APIError(400, f"this server does not answer to {told} (a guard against DNS rebinding); start "
                           f"charnn serve with --allowed-hosts listing the names clients use (comma-separated; "
                           f"* = any)", code="host_not_allowed")
            return await err.response()(scope, receive, send)
        if self.key is not None and scope["path"] not in PUBLIC:
            # Starlette decodes header bytes as latin-1: encoding back gives the bytes sent.
            scheme, _, token = headers.get("authorization", "").encode("latin-1").strip().partition(b" ")
            if not (hmac.compare_digest(_digest(token.strip()), self.key) and scheme.lower() == b"bearer"):
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
