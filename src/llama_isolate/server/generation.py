"""One prompt for one HTTP request: its own scope, its pieces as they come, and cancellation.

Each request carries its whole conversation, so each gets a fresh
`LlamaScope` given that history; the engine finds the KV cache that shares
the longest prefix with it (the previous turn's, or a shared system prompt).
The scope is disposed when the request ends, which stops the prompt in the
engine if it is still queued, reading its prompt or generating.

A dropped connection is noticed by reading the ASGI ``receive`` channel for
``http.disconnect`` while the request waits (`until_disconnected`):
Starlette alone notices it only when a write fails, which is never while a
prompt waits in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from llama_isolate import (
    CompletionEvent,
    LlamaFeatureNotEnabled,
    LlamaParent,
    LlamaQueueFull,
    LlamaSchemaError,
    LlamaStatusError,
    SamplerParams,
    TokenLogprob,
    ToolCallDelta,
)

from .convert import Turn
from .errors import CLIENT_GONE_KEY, ApiError, ClientGone

T = TypeVar("T")
Item = str | ToolCallDelta | CompletionEvent


class Generation:
    """A prompt sent through its own scope; `next()` gives its text pieces and tool-call deltas, then its event."""

    def __init__(
        self,
        parent: LlamaParent,
        on_close: Callable[[Generation], object] = lambda _: None,
        on_first: Callable[[], object] = lambda: None,
    ) -> None:
        self._on_close = on_close
        self._on_first = on_first
        self._scope = parent.get_scope()
        self._items: asyncio.Queue[Item] = asyncio.Queue()
        self._scope.stream.listen(self._piece)
        self._scope.tool_call_deltas.listen(self._piece)
        self._scope.completions.listen(self._items.put_nowait)
        self._logprobs: list[TokenLogprob] = []
        self._scope.token_logprobs.listen(self._logprobs.append)
        self.event: CompletionEvent | None = None
        self.generating = False
        """True from the first piece of text on."""
        self._closed = False

    def _piece(self, text: str | ToolCallDelta) -> None:
        if not self.generating:
            self.generating = True
            self._on_first()
        self._items.put_nowait(text)

    @classmethod
    async def start(
        cls,
        parent: LlamaParent,
        turn: Turn,
        sampler: SamplerParams,
        max_tokens: int | None,
        *,
        raw: bool = False,
        on_close: Callable[[Generation], object] = lambda _: None,
        on_first: Callable[[], object] = lambda: None,
        param: str = "messages",
    ) -> Generation:
        """Queue the prompt; `ApiError` if it cannot be (429 queue full, 503 not ready, 400 bad input).

        `on_first()` runs at its first piece of text; `on_close(generation)`
        once the scope is disposed (its `event` is set if the prompt ended).
        """
        generation = cls(parent, on_close, on_first)
        try:
            generation._scope.messages[:] = turn.history
            generation._scope.trim_history = turn.trim_history
            schema, logprobs = turn.json_schema, turn.logprobs
            if turn.images:
                await generation._scope.send_prompt_with_images(
                    turn.prompt,
                    turn.images,
                    sampler_params=sampler,
                    max_tokens=max_tokens,
                    json_schema=schema,
                    logprobs=logprobs,
                    n=turn.n,
                )
            else:
                await generation._scope.send_prompt(
                    turn.prompt,
                    sampler_params=sampler,
                    max_tokens=max_tokens,
                    raw=raw,
                    json_schema=schema,
                    logprobs=logprobs,
                    tools=turn.tools,
                    tool_choice=turn.tool_choice,
                    tool_call_id=turn.tool_call_id,
                    n=turn.n,
                )
        except BaseException as exc:
            await generation.close()
            refusal = _refusal(exc, param, "tools" if turn.tools else "response_format")
            if refusal is exc:
                raise
            raise refusal from None
        return generation

    def take_logprobs(self) -> list[TokenLogprob]:
        """The token log probabilities that came since the last call (they come before their text)."""
        taken, self._logprobs[:] = list(self._logprobs), []
        return taken

    async def next(self) -> Item:
        """The next text piece or tool-call delta, or the event (the last item)."""
        item = await self._items.get()
        if isinstance(item, CompletionEvent):
            self.event = item
        return item

    async def finish(self) -> tuple[str, CompletionEvent]:
        """Every piece to the end: the text and the event (whose calls are whole)."""
        pieces = []
        while not isinstance(item := await self.next(), CompletionEvent):
            if isinstance(item, str):
                pieces.append(item)
        return "".join(pieces), item

    async def close(self) -> None:
        """Stop the prompt if it has not ended and free the scope; idempotent, and finishes even if cancelled."""
        if self._closed:
            return
        self._closed = True
        await to_the_end(self._close())

    async def _close(self) -> None:
        await self._scope.dispose()
        while self.event is None and not self._items.empty():  # a stopped prompt's event came on dispose
            item = self._items.get_nowait()
            if isinstance(item, CompletionEvent):
                self.event = item
        self._on_close(self)


_SCOPE_HISTORY = re.compile(r"\bscope scope-[0-9]+-[0-9a-f]+ messages")


def _refusal(exc: BaseException, param: str, schema_param: str) -> BaseException:
    if isinstance(exc, LlamaQueueFull):
        return ApiError(429, f"the server is busy: {exc}", code="queue_full")
    if isinstance(exc, LlamaStatusError):
        return ApiError(503, f"the model is not ready: {exc}", code="model_not_ready")
    if isinstance(exc, LlamaSchemaError):
        message = f"the JSON schema cannot be enforced: {exc}"
        return ApiError(400, message, param=schema_param, code="invalid_schema")
    if isinstance(exc, LlamaFeatureNotEnabled):
        return ApiError(400, str(exc), param=param, code="images_not_supported")
    if isinstance(exc, (ValueError, TypeError)):
        # The library names a scope's history by the scope's id; the client knows it as its own messages.
        message = _SCOPE_HISTORY.sub("messages", str(exc))
        named = message.split("[", 1)[0].split(" ", 1)[0]  # "tools[1] needs ...", "tool_choice names ..."
        where = named if named in ("tools", "tool_choice", "n", "messages") else param
        return ApiError(400, message, param=where, code="invalid_value")
    return exc


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
