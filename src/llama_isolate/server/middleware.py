"""ASGI middleware: the Host check, the API key, the request body's cap and deadline, security headers and
request counting.

Plain ASGI (not Starlette's `BaseHTTPMiddleware`), so the ``receive``
channel that disconnect detection reads passes through untouched.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import ipaddress
import json
import time
from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import CLIENT_GONE_KEY, CLIENT_GONE_STATUS, ApiError

DEFAULT_BODY_TIMEOUT_S = 30.0
MAX_BODY_COMMAS = 131_072
"""The most commas a request body may hold: a bound on its JSON values, which are parsed and validated on the event
loop (2 million ``logit_bias`` keys took 2 s to parse and 0.8 s more to validate, with every other request waiting).
A body under the bound parses in about a tenth of a second; commas inside strings count too, so a text may hold
that many, far more than a context could (see docs/reliability.md#bounds-on-one-prompt)."""
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
    """413 for a request body larger than `limit` bytes, by its Content-Length or as it arrives, or with more
    than `MAX_BODY_COMMAS` commas; 408 for a body that has not all arrived `timeout` seconds after the request
    began (a client trickling bytes holds a connection and its request for as long as it likes otherwise)."""

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
        received = commas = 0
        answered = False
        deadline = time.monotonic() + self._timeout
        whole = False  # the body has all arrived

        async def limited_receive() -> Message:
            nonlocal received, commas, answered, whole
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
                chunk = message.get("body", b"")
                received += len(chunk)
                commas += chunk.count(b",")
                whole = not message.get("more_body", False)
                if received > self._limit and not answered:
                    answered = True
                    await _send_error(send, too_large)
                elif commas > MAX_BODY_COMMAS and not answered:
                    answered = True
                    crowded = (
                        f"the request body holds more than {MAX_BODY_COMMAS} commas: more JSON values than a request "
                        "may have (a message's text may hold that many too, far more than a context could read)"
                    )
                    await _send_error(send, ApiError(413, crowded, code="request_too_large"))
            if answered:  # the app stops reading; whatever it answers is dropped
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not answered:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


LOOPBACK_HOSTS = ("localhost", "*.localhost")
"""Host names a server bound to a loopback address answers to (IP addresses always pass; see `HostCheckMiddleware`)."""


def is_loopback(host: str) -> bool:
    """Whether an address to bind or to reach (``127.0.0.1``, ``::1``, ``localhost``) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostCheckMiddleware:
    """403 for a request whose ``Host`` header is a name not in `allowed` (fnmatch patterns; ``*`` allows all).

    A server on localhost without an API key can otherwise be driven by any web page through DNS rebinding: the
    page's own name, made to resolve to 127.0.0.1, reaches the server with that name in ``Host``. An address
    (``127.0.0.1:8080``, ``[::1]``) cannot be rebound, so addresses always pass; only names are checked.
    """

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self._allowed = [pattern.lower() for pattern in allowed]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allows(dict(scope["headers"]).get(b"host", b"").decode("latin-1")):
            await self.app(scope, receive, send)
            return
        await _send_error(
            send,
            ApiError(
                403,
                "this server does not answer to that Host name (a page on another site may be trying to reach it "
                "through DNS rebinding); start it with --allowed-host NAME to allow a name",
                code="host_not_allowed",
            ),
        )

    def allows(self, host: str) -> bool:
        """Whether a ``Host`` header's value passes: an address, or a name one of the patterns matches."""
        name = host.strip().lower()
        if name.startswith("["):  # [::1]:8080
            name = name[1 : name.find("]")] if "]" in name else name
        elif name.count(":") == 1:
            name = name.rsplit(":", 1)[0]
        if not name:
            return True  # no name to rebind (an HTTP/1.0 client; every browser sends one)
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return any(fnmatch.fnmatchcase(name, pattern) for pattern in self._allowed)
        return True


SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
        b"base-uri 'none'; form-action 'none'",
    ),
]
"""What every answer carries: the chat page runs only its own files, talks only to this server, and may not be
framed by another site (clickjacking); nothing is sniffed into another type."""


class _SendFilter:
    """A middleware that sees each message an HTTP request's answer sends, in `forward`; the rest passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def filtered(message: Message) -> None:
            await self.forward(scope, send, message)

        await self.app(scope, receive, filtered)

    async def forward(self, scope: Scope, send: Send, message: Message) -> None:
        raise NotImplementedError


class SecurityHeadersMiddleware(_SendFilter):
    """Adds `SECURITY_HEADERS` to every response, those it does not have already (one an app behind it set)."""

    async def forward(self, scope: Scope, send: Send, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {bytes(name).lower() for name, _ in headers}
            missing = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
            message = {**message, "headers": [*headers, *missing]}
        await send(message)


class ClosedConnectionGuard(_SendFilter):
    """Answers to a client that has gone are dropped, not raised.

    uvicorn marks only the request it is answering as disconnected when a client leaves; the requests the client
    had pipelined behind it still run, and with uvloop their first write raises ``RuntimeError`` on the closed
    transport (a traceback in the log per request). Here such a write is dropped and the request marked gone
    (`CLIENT_GONE_KEY`), so that a stream stops producing (`EventStreamResponse` checks it).
    """

    async def forward(self, scope: Scope, send: Send, message: Message) -> None:
        if scope.get(CLIENT_GONE_KEY):
            return
        try:
            await send(message)
        except RuntimeError as exc:
            if "closed" not in str(exc):  # uvloop's "unable to perform operation on <TCPTransport closed=True>"
                raise
            scope[CLIENT_GONE_KEY] = True


class RequestCounter:
    """Counts every answered request by endpoint and status (`Metrics.request`), but those `unless` names."""

    def __init__(
        self,
        app: ASGIApp,
        count: Callable[[str, int], None],
        endpoints: set[str],
        unless: Callable[[Scope], bool] | None = None,
    ) -> None:
        self.app = app
        self._count = count
        self._endpoints = endpoints
        self._unless = unless

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
            if self._unless is None or not self._unless(scope):
                gone = scope.get(CLIENT_GONE_KEY)
                self._count(path, CLIENT_GONE_STATUS if gone else status or 500)
