"""The door of the server: the API key and the body size, checked before anything parses a request.

Guard is ASGI middleware around the whole app. It runs before routing and JSON parsing, so
an unauthenticated client learns nothing about the request it sent (401 on every /v1 route
without `Authorization: Bearer KEY`), and a body over --max-body is refused (413) without
ever being buffered beyond the limit.

Imports: starlette's Headers and serve.schemas (APIError, for the errors' shape).
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers

from charnn.serve.schemas import APIError


class Guard:
    """ASGI middleware: 401 without the API key on /v1, 413 for bodies over the limit."""

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
