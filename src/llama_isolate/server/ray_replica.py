"""A model replica of the Ray Serve application: the app of `llama-isolate serve`, called through a handle.

The front (`llama_isolate.server.ray_front`) reads each HTTP request, works
out its conversation's points, and passes the request on as a `Forwarded`
value through a `DeploymentHandle`, so that Serve's router
(`llama_isolate.server.ray_router.PrefixAffinityRouter`) sees the points
before it picks a replica. `ModelReplica.http` runs the request through the
replica's own `create_app` (every endpoint, error and streaming rule of
`serve`) and streams the answer back: its status and headers first, then
its body as it is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import ServedModel, create_app
from .affinity import Point, PrefixLedger
from .errors import CLIENT_GONE_KEY

__all__ = ["Forwarded", "ModelReplica", "Start", "serve_asgi"]

logger = logging.getLogger(__name__)

ENDS_WITHIN_S = 5.0
"""How long an app that wrote its whole answer may take to return before it is cancelled."""


@dataclass(frozen=True)
class Forwarded:
    """One HTTP request as the front passes it to a model replica."""

    method: str
    path: str
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    client: tuple[str, int] | None = None
    points: tuple[Point, ...] = ()
    """The conversation's points, for the router (`llama_isolate.server.affinity`)."""
    replica: str | None = None
    """A replica's unique id: the request goes to that replica only (the front's ``/metrics``)."""


@dataclass(frozen=True)
class Start:
    """The first item of a forwarded answer: its status and headers."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]


async def serve_asgi(app: Any, request: Forwarded) -> AsyncIterator[Start | bytes]:
    """Run `request` through the ASGI `app`: a `Start`, then the body's chunks as the app writes them.

    Closing the iterator early (the client left, Ray cancelled the call) is a
    disconnect for the app: the request is marked gone (counted as 499, as
    `serve` counts a client that left) and its call cancelled, and the
    server's cleanup stops the prompt in the engine.
    """
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": request.query,
        "headers": [(bytes(k), bytes(v)) for k, v in request.headers],
        "client": request.client,
        "server": None,
    }
    written: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    gone = asyncio.Event()
    body_given = False

    async def receive() -> dict[str, Any]:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await written.put(message)

    call = asyncio.create_task(app(scope, receive, send))
    call.add_done_callback(lambda _: written.put_nowait(None))
    whole = False
    try:
        while (message := await written.get()) is not None:
            if message["type"] == "http.response.start":
                yield Start(message["status"], tuple((bytes(k), bytes(v)) for k, v in message.get("headers", ())))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body", False):
                    whole = True
                    break
        if not whole and call.done() and call.exception() is not None:
            raise call.exception()  # type: ignore[misc]
    finally:
        if whole:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(call), ENDS_WITHIN_S)
        else:
            scope[CLIENT_GONE_KEY] = True
        gone.set()
        if not call.done():
            call.cancel()


class ModelReplica:
    """A Serve replica's part: every model of `models` in its own `create_app`, answering forwarded requests.

    It reports the points of the conversations it answered most recently and
    its slots to the routers (`record_routing_stats`), and serves as before
    otherwise: its workers are its child processes, its queue and 429s its own.
    """

    async def __init__(self, models: Sequence[ServedModel], app_options: dict[str, Any]) -> None:  # type: ignore[misc]
        self._app = create_app(models=models, **app_options)
        self._lifespan = self._app.router.lifespan_context(self._app)
        await self._lifespan.__aenter__()
        self._ledger = PrefixLedger()
        self._slots = sum(model.load.context_params.n_parallel * model.replicas for model in models)
        self._reports = 0

    async def http(self, request: Forwarded) -> AsyncIterator[Start | bytes]:
        """Answer one forwarded request (see `serve_asgi`); an answered conversation joins the ledger."""
        async for item in serve_asgi(self._app, request):
            if isinstance(item, Start) and item.status == 200 and request.points:
                self._ledger.record(request.points)
            yield item

    def record_routing_stats(self) -> dict[str, Any]:
        """What Serve passes to the routers: the ledger's points (numbered, to tell reports apart) and the slots."""
        self._reports += 1
        return {"report": self._reports, "points": self._ledger.keys(), "slots": self._slots}

    async def __del__(self) -> None:
        """Serve stops the replica (scaled down, deleted) once its requests ended: its workers stop."""
        await self._lifespan.__aexit__(None, None, None)
