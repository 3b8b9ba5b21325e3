"""PromptHandle: one prompt's output and its control, for the caller who sent it.

The parent's streams carry every prompt's pieces; a handle carries one
prompt's only, so a caller (an HTTP request, a tool loop) needs no listener
to subscribe and no filtering by id. The handle is fed by the completion
ledger on the parent's event loop and read there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType

from ._events import CompletionEvent, TokenLogprob, ToolCallDelta

_END = object()


class PromptHandle:
    """One prompt sent with `LlamaParent.generate` or `LlamaScope.generate`: its pieces, its event, its cancel.

    ``async for piece in handle`` gives the reply's text pieces (str) and
    tool-call pieces (`ToolCallDelta`) as they are generated, and ends when
    the prompt ends; ``await handle.event`` gives its `CompletionEvent`
    (also after the fact, and whether or not the pieces were read);
    ``await handle.cancel()`` stops it wherever it is, queued, reading its
    prompt or generating. Leaving ``async with handle`` cancels a prompt
    that has not ended. Every prompt ends exactly once: done, failed (the
    event's ``error``) or cancelled (``finish_reason="cancelled"``).

    Example::

        async with parent.generate("Name three rivers.", max_tokens=32) as handle:
            async for piece in handle:
                print(piece, end="")
            event = await handle.event
    """

    def __init__(self, prompt_id: str, cancel: Callable[[str], Awaitable[None]]) -> None:
        self._id = prompt_id
        self._cancel = cancel
        self._items: asyncio.Queue[object] = asyncio.Queue()
        self._event: asyncio.Future[CompletionEvent] = asyncio.get_running_loop().create_future()
        self._logprobs: list[TokenLogprob] = []

    @property
    def id(self) -> str:
        """The prompt's id (`CompletionEvent.prompt_id`, and what `LlamaParent.wait_for_completion` takes)."""
        return self._id

    @property
    def done(self) -> bool:
        """True once the prompt has ended (its event is there)."""
        return self._event.done()

    @property
    def event(self) -> Awaitable[CompletionEvent]:
        """Awaitable: the prompt's `CompletionEvent`, once it ends. Cancelling the await does not cancel the prompt."""
        return asyncio.shield(self._event)

    def take_logprobs(self) -> list[TokenLogprob]:
        """The `TokenLogprob` entries (prompts sent with ``logprobs=k``) that came since the last call.

        An entry comes before the text piece it belongs to, so taking them
        after each piece pairs them with it.
        """
        taken, self._logprobs = self._logprobs, []
        return taken

    def __aiter__(self) -> PromptHandle:
        return self

    async def __anext__(self) -> str | ToolCallDelta:
        """The next piece; `StopAsyncIteration` once the prompt has ended. A cancelled wait loses nothing."""
        item = await self._items.get()
        if item is _END:
            self._items.put_nowait(_END)  # every later call ends at once too
            raise StopAsyncIteration
        return item  # type: ignore[return-value]  # only pieces and _END are ever queued

    async def cancel(self) -> None:
        """Stop the prompt (queued, reading or generating) and return once its event is out; no-op once ended.

        Cancellation: cancelling the awaiting task does not undo the cancel.
        """
        if not self._event.done():
            await self._cancel(self._id)

    async def __aenter__(self) -> PromptHandle:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.cancel()

    def __repr__(self) -> str:
        return f"<PromptHandle {self._id} {'done' if self.done else 'pending'}>"

    def _ended(self) -> CompletionEvent:
        """The event of an ended prompt (no event loop needed)."""
        return self._event.result()

    def _left(self) -> list[str | ToolCallDelta]:
        """The pieces not read yet, taken without waiting (no event loop needed)."""
        left = []
        while not self._items.empty() and (item := self._items.get_nowait()) is not _END:
            left.append(item)
        if self.done:
            self._items.put_nowait(_END)
        return left  # type: ignore[return-value]  # only pieces and _END are ever queued

    # ------------------------------------------------------------------ fed by the ledger (a PromptListener)

    def on_piece(self, item: str | ToolCallDelta) -> None:
        """(For the parent) a piece of the reply came."""
        self._items.put_nowait(item)

    def on_logprob(self, entry: TokenLogprob) -> None:
        """(For the parent) a token's log probability came."""
        self._logprobs.append(entry)

    def on_event(self, event: CompletionEvent) -> None:
        """(For the parent) the prompt ended with `event`."""
        if not self._event.done():
            self._event.set_result(event)
            self._items.put_nowait(_END)
