"""ASGI middleware: the API key, the request body's cap and deadline, and request counting.

Plain ASGI (not Starlette's `BaseHTTPMiddleware`), so the ``receive``
channel that disconnect detection reads passes through untouched.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import CLIENT_GONE_KEY, CLIENT_GONE_STATUS, ApiError

DEFAULT_BODY_TIMEOUT_S = 30.0
PUBLIC_PATHS = ("/health",)  # reachable without the API key; so is the chat page (it asks for the key)
PAGE_PATHS = ("/", "/static/")


async def _send_error(send: Send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """401 unless ``Authorization: Bearer <key>`` (or ``x-api-key``) matches; compared in constant time."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self._key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or _public(route_path(scope)):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"")
        token = given[7:].strip() if given[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        if not hmac.compare_digest(token, self._key):
            message = "a wrong API key" if token else "no API key (send Authorization: Bearer <key>)"
            await _send_error(
                send,
                ApiError(
                    401, f"the request has {message}", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
                ),
            )
            return
        await self.app(scope, receive, send)


def route_path(scope: Scope) -> str:
    """The request's path inside this app (without the prefix it is mounted under)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path == "/" or path.startswith("/static/")


class BodyLimitMiddleware:
    """413 for a request body larger than `limit` bytes, by its Content-Length or as it arrives; 408 for a body
    that has not all arrived `timeout` seconds after the request began (a client trickling bytes holds a
    connection and its request for as long as it likes otherwise)."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float = DEFAULT_BODY_TIMEOUT_S) -> None:
        self.app = app
        self._limit = limit
        self._timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = ApiError(
            413, f"the request body is larger than {self._limit} bytes (--max-body-bytes)", code="request_too_large"
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self._limit):
            await _send_error(send, too_large)
            return
        received = 0
        answered = False
        deadline = time.monotonic() + self._timeout
        whole = False  # the body has all arrived

        async def limited_receive() -> Message:
            nonlocal received, answered, whole
            if whole or answered:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    answered = True
                    late = f"the request body did not arrive within {self._timeout:g} s"
                    await _send_error(send, ApiError(408, late, code="request_timeout"))
                    return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                whole = not message.get("more_body", False)
                if received > self._limit and not answered:
                    answered = True
                    await _send_error(send, too_large)
            if answered:  # the app stops reading; whatever it answers is dropped
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not answered:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


class RequestCounter:
    """Counts every answered request by endpoint and status (`Metrics.request`)."""

    def __init__(self, app: ASGIApp, count: Callable[[str, int], None], endpoints: set[str]) -> None:
        self.app = app
        self._count = count
        self._endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" else ""
        if path not in self._endpoints:
            await self.app(scope, receive, send)
            return
        status = 0

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            gone = scope.get(CLIENT_GONE_KEY)
            self._count(path, CLIENT_GONE_STATUS if gone else status or 500)
