"""Streaming and ASGI helpers: an SSE answer that stops when its client leaves, and cleanups nothing can cut short.

A dropped connection is noticed by reading the ASGI ``receive`` channel for
``http.disconnect`` while the request waits (`until_disconnected`):
Starlette alone notices it only when a write fails, which is never while a
prompt waits in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import CLIENT_GONE_KEY, ClientGone

T = TypeVar("T")


_FINISHING: set[asyncio.Future[Any]] = set()


async def to_the_end(work: Awaitable[T]) -> T:
    """`work`'s result; `work` runs to its end even if the caller is cancelled meanwhile.

    An anyio shield holds off only anyio's own cancel scopes (Starlette's);
    a plain `Task.cancel()` still lands inside it. Ray Serve cancels a
    request's task that way when its client leaves, and a cleanup cut short
    there leaves the prompt running. So `work` runs as a task of its own, out
    of reach of the caller's cancellation: the caller waits for it unless
    cancelled from outside, and then `work` goes on alone.
    """
    task = asyncio.ensure_future(work)
    _FINISHING.add(task)
    task.add_done_callback(_FINISHING.discard)
    with anyio.CancelScope(shield=True):
        await asyncio.shield(task)
    return task.result()


async def until_disconnected(receive: Receive) -> None:
    """Return when the client has gone (the request body must have been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """`work`'s result, or `ClientGone` (with `work` cancelled) if the client leaves first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(until_disconnected(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientGone
    return task.result()


class EventStreamResponse(StreamingResponse):
    """A server-sent-events answer that stops producing the moment the client disconnects.

    `on_end` runs once the stream is over, however it ended (finished, client
    gone, server shutting down); it is where the prompt is stopped.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        on_end: Callable[[], Awaitable[Any]],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
        self._events = events
        self._on_end = on_end
        self.disconnected = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        finished = False
        try:
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    await until_disconnected(receive)
                    if not finished:  # after the last byte the server reports a disconnect too
                        self.disconnected = True
                        scope[CLIENT_GONE_KEY] = True  # for the request counter
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                with contextlib.suppress(OSError):  # the client went away while we wrote
                    async for chunk in self._events:
                        if scope.get(CLIENT_GONE_KEY):  # a write to it was dropped (`ClosedConnectionGuard`)
                            self.disconnected = True
                            break
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    finished = not self.disconnected
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        finally:
            await to_the_end(self._on_end())
