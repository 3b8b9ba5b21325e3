"""One prompt for one HTTP request: its handle, its pieces as they come, and cancellation.

Each request carries its whole conversation and is sent with
`LlamaParent.generate`, which keeps nothing after it; the engine finds the KV
cache that shares the longest prefix with it (the previous turn's, or a
shared system prompt). Closing the generation cancels the prompt in the
engine if it is still queued, reading its prompt or generating.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llama_isolate import (
    CompletionEvent,
    LlamaParent,
    PromptHandle,
    PromptOptions,
    TokenLogprob,
    ToolCallDelta,
)

from .errors import refused_as_api_error
from .streaming import to_the_end

Item = str | ToolCallDelta | CompletionEvent


class Generation:
    """A prompt's handle for one request; `next()` gives its text pieces and tool-call deltas, then its event."""

    def __init__(
        self,
        on_close: Callable[[Generation], object] = lambda _: None,
        on_first: Callable[[], object] = lambda: None,
    ) -> None:
        self._on_close = on_close
        self._on_first = on_first
        self._handle: PromptHandle | None = None
        self.event: CompletionEvent | None = None
        self.generating = False
        """True from the first piece of text on."""
        self._closed = False

    @classmethod
    async def start(
        cls,
        parent: LlamaParent,
        messages: list[dict[str, Any]],
        options: PromptOptions,
        *,
        on_close: Callable[[Generation], object] = lambda _: None,
        on_first: Callable[[], object] = lambda: None,
        param: str = "messages",
    ) -> Generation:
        """Queue the answer to `messages`; `ApiError` if it cannot be (429 queue full, 503 not ready, 400 bad input).

        `on_first()` runs at its first piece of text; `on_close(generation)`
        once it is closed (its `event` is set if the prompt ended).
        """
        generation = cls(on_close, on_first)
        try:
            with refused_as_api_error(param):
                generation._handle = parent.generate(messages, options)
        except BaseException:
            await generation.close()
            raise
        return generation

    def take_logprobs(self) -> list[TokenLogprob]:
        """The token log probabilities that came since the last call (they come before their text)."""
        return [] if self._handle is None else self._handle.take_logprobs()

    async def next(self) -> Item:
        """The next text piece or tool-call delta, or the event (the last item)."""
        assert self._handle is not None, "next() on a generation that did not start"
        if self.event is not None:
            return self.event
        try:
            piece = await self._handle.__anext__()
        except StopAsyncIteration:
            self.event = await self._handle.event
            return self.event
        if not self.generating:
            self.generating = True
            self._on_first()
        return piece

    async def finish(self) -> tuple[str, CompletionEvent]:
        """Every piece to the end: the text and the event (whose calls are whole)."""
        pieces = []
        while not isinstance(item := await self.next(), CompletionEvent):
            if isinstance(item, str):
                pieces.append(item)
        return "".join(pieces), item

    async def close(self) -> None:
        """Cancel the prompt if it has not ended; idempotent, and finishes even if cancelled."""
        if self._closed:
            return
        self._closed = True
        await to_the_end(self._close())

    async def _close(self) -> None:
        handle = self._handle
        if handle is not None:
            await handle.cancel()
            if self.event is None:
                self.event = await handle.event
        self._on_close(self)
