"""One prompt for one HTTP request: its own scope, its pieces as they come, and cancellation.

Each request carries its whole conversation, so each gets a fresh
`LlamaScope` given that history; the engine finds the KV cache that shares
the longest prefix with it (the previous turn's, or a shared system prompt).
The scope is disposed when the request ends, which stops the prompt in the
engine if it is still queued, reading its prompt or generating.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import TypeVar

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
from .errors import ApiError
from .streaming import to_the_end

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
