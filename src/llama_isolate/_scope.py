"""LlamaScope: one conversation on a LlamaParent.

The scope is a view: the parent keeps the queue and the bookkeeping of every
prompt; the scope holds its conversation's history and its filtered streams,
and asks the parent (and through it the worker) for the rest.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ._client.scope_state import ScopeSnapshot, cache_kind, model_fingerprint, pack, unpack
from ._errors import LlamaStateError, LlamaStatusError
from ._events import CompletionEvent, ModelInfo, TokenLogprob, ToolCallDelta
from ._handle import PromptHandle
from ._images import LlamaImage
from ._options import PromptFields, PromptOptions, options_of, takes_prompt_fields
from ._params import LlamaLoad
from ._streams import EventStream, TokenStream

if TYPE_CHECKING:
    from typing_extensions import Unpack


DEFAULT_SCOPE_ID = "default"  # the id of every parent's `default_scope`


class ScopeHost(Protocol):
    """What a scope needs of its parent (`LlamaParent` is the one implementation).

    Besides the public API, eight internal calls: check a turn's images, send
    the turn, or generate one with a handle, stop the scope's prompts, forget
    its cache in the worker, check that it is idle, and move its KV state out
    of and into the worker.
    """

    @property
    def load(self) -> LlamaLoad: ...

    @property
    def model_info(self) -> ModelInfo | None: ...

    def _scope_send(self, scope: LlamaScope, prompt: str, options: PromptOptions) -> str: ...

    def _image_options(self, options: PromptOptions, images: Sequence[LlamaImage]) -> PromptOptions: ...

    def _scope_generate(self, scope: LlamaScope, prompt: str, options: PromptOptions) -> PromptHandle: ...

    async def wait_for_completion(self, prompt_id: str) -> CompletionEvent: ...

    async def _scope_stop(self, scope: LlamaScope) -> None: ...

    def _scope_forget(self, scope: LlamaScope, *, disposed: bool) -> None: ...

    def _scope_idle(self, scope: LlamaScope, what: str) -> None: ...

    async def _scope_save_kv(self, scope: LlamaScope) -> tuple[tuple[int, ...], bytes]: ...

    async def _scope_load_kv(self, scope: LlamaScope, tokens: tuple[int, ...], data: bytes) -> None: ...


class LlamaScope:
    """One conversation on a `LlamaParent`, with its own history and streams.

    Its `stream` and `completions` carry only the tokens and events of prompts
    sent through it; its `messages` hold only its turns.

    Example::

        left, right = parent.get_scope(), parent.get_scope()
        left.stream.listen(lambda t: left_pane.write(t))
        await left.send_prompt("Tell me a joke.")
    """

    _ids = itertools.count(1)

    def __init__(self, parent: ScopeHost, *, scope_id: str | None = None) -> None:
        self.id = scope_id or f"scope-{next(LlamaScope._ids)}-{uuid.uuid4().hex[:8]}"
        """The scope's id: `CompletionEvent.scope_id` of its prompts, and its conversation's key in the worker."""
        self._permanent = scope_id is not None  # the parent's default scope: it lives as long as its parent
        self.parent = parent
        """The `LlamaParent` this scope belongs to."""
        self.stream = TokenStream()
        """The text pieces of this scope's prompts only."""
        self.completions: EventStream[CompletionEvent] = EventStream()
        """The completion events of this scope's prompts only."""
        self.token_logprobs: EventStream[TokenLogprob] = EventStream()
        """Each generated token of this scope's prompts sent with ``logprobs=k`` (see `TokenLogprob`)."""
        self.tool_call_deltas: EventStream[ToolCallDelta] = EventStream()
        """This scope's tool calls as they are written (see `ToolCallDelta`)."""
        self.messages: list[dict[str, Any]] = []
        """This conversation's chat history (see `LlamaParent.messages`)."""
        self.disposed = False
        """True after `dispose()`."""
        self.trim_history = True
        """What happens when this conversation outgrows the context: True (the default) leaves its oldest turns
        out, and `CompletionEvent.dropped_turns` says how many; False fails the prompt instead, with
        ``error_code="context_length_exceeded"`` (what OpenAI's API does, and `serve`'s default). Read when a
        prompt is sent."""

    @takes_prompt_fields
    async def send_prompt(
        self, prompt: str, *, options: PromptOptions | None = None, **overrides: Unpack[PromptFields]
    ) -> str:
        """``parent.send_prompt(prompt, scope=self, ...)``: a turn of this conversation; returns its prompt id.

        Example::

            pid = await scope.send_prompt("And then?", max_tokens=64)
        """
        return self.parent._scope_send(self, prompt, options_of(options, overrides, "send_prompt"))

    @takes_prompt_fields
    async def send_prompt_with_images(
        self,
        prompt: str,
        images: Sequence[LlamaImage],
        /,
        *,
        options: PromptOptions | None = None,
        **overrides: Unpack[PromptFields],
    ) -> str:
        """``scope.send_prompt(prompt, images=images, ...)`` (see `LlamaParent.send_prompt_with_images`).

        Example::

            pid = await scope.send_prompt_with_images("What is this?", [image])
        """
        chosen = self.parent._image_options(options_of(options, overrides, "send_prompt_with_images"), images)
        return self.parent._scope_send(self, prompt, chosen)

    @takes_prompt_fields
    def generate(
        self, prompt: str, options: PromptOptions | None = None, **overrides: Unpack[PromptFields]
    ) -> PromptHandle:
        """A turn of this conversation, like `send_prompt`, with its `PromptHandle` (see `LlamaParent.generate`).

        The turn and its reply join `messages`, and the scope's streams carry
        its pieces too.

        Example::

            async with scope.generate("And then?", max_tokens=64) as handle:
                reply = "".join([piece async for piece in handle if isinstance(piece, str)])
        """
        return self.parent._scope_generate(self, prompt, options_of(options, overrides, "generate"))

    async def cancel(self) -> None:
        """Cancel this scope's running prompt and remove its queued ones.

        Each gets an event with ``finish_reason="cancelled"`` (success, with
        the text generated so far). Other scopes are not touched. Returns once
        the events were emitted. (`LlamaParent.stop` is another thing: it
        stops what runs in every scope, with ``finish_reason="stopped"``, and
        leaves the queue alone.)

        Cancellation: cancelling the awaiting task does not undo the cancel.

        Example::

            await scope.cancel()
        """
        await self.parent._scope_stop(self)

    async def stop(self) -> None:
        """The first name of `cancel()`, kept for existing code: the same call.

        Example::

            await scope.stop()  # == await scope.cancel()
        """
        await self.cancel()

    async def clear(self) -> None:
        """`cancel()`, then forget the conversation: empty `messages`, and its KV cache is no longer its own.

        The scope stays usable; its next prompt starts a new conversation. The
        cache stays in the worker, owned by no one, for any prompt that starts
        with the same tokens, until a slot needs the room.

        Example::

            await scope.clear()
            assert scope.messages == []
        """
        await self.cancel()
        self.messages.clear()
        self.parent._scope_forget(self, disposed=False)

    async def save_state(self) -> bytes:
        """The conversation and its KV cache as bytes, to `load_state()` later (also in another process).

        The bytes hold `messages` and llama.cpp's sequence state, and name the
        model and KV cache type they belong to.

        Raises:
            LlamaStatusError: the scope has prompts running or queued, or the parent is not ready.

        Cancellation: cancelling the await abandons the result.

        Example::

            data = await scope.save_state()
            Path("chat.state").write_bytes(data)
        """
        info = self._idle_parent("save_state")
        tokens, data = await self.parent._scope_save_kv(self)
        snapshot = ScopeSnapshot(
            model_fingerprint(info), cache_kind(self.parent.load), list(self.messages), tokens, data
        )
        return pack(snapshot)

    async def load_state(self, data: bytes) -> None:
        """Replace this conversation with one saved by `save_state()`; its next turn reuses the KV cache.

        Raises:
            LlamaStateError: the bytes are damaged, or were saved with another model or KV cache type.
            LlamaStatusError: the scope has prompts running or queued, or the parent is not ready.

        Cancellation: if the awaiting task is cancelled, the state may or may not be loaded;
        `messages` is only replaced when the load succeeded.

        Example::

            await scope.load_state(Path("chat.state").read_bytes())
        """
        info = self._idle_parent("load_state")
        snapshot = unpack(data)
        expected = model_fingerprint(info)
        if snapshot.model != expected:
            raise LlamaStateError(f"the state was saved with model [{snapshot.model}], not this one [{expected}]")
        if snapshot.cache != cache_kind(self.parent.load):
            raise LlamaStateError(
                f"the state was saved with KV cache {snapshot.cache}, not {cache_kind(self.parent.load)}"
            )
        await self.parent._scope_load_kv(self, snapshot.tokens, snapshot.data)
        self.messages[:] = snapshot.messages

    def _idle_parent(self, what: str) -> ModelInfo:
        self.parent._scope_idle(self, what)
        info = self.parent.model_info
        assert info is not None  # a ready parent has loaded its model
        return info

    async def dispose(self) -> None:
        """`cancel()`, then close this scope's streams and free its state in the worker.

        The parent goes on. Idempotent. The parent's `default_scope` lives as
        long as its parent: disposing it raises `LlamaStatusError` (`clear()`
        it instead).

        Example::

            await scope.dispose()
        """
        if self._permanent:
            raise LlamaStatusError("the default scope lives as long as its parent: clear() it, or dispose() the parent")
        if self.disposed:
            return
        await self.cancel()
        self.disposed = True
        self.parent._scope_forget(self, disposed=True)
        self._close()

    def _close(self) -> None:
        self.disposed = True
        self.stream._close()
        self.completions._close()
        self.token_logprobs._close()
        self.tool_call_deltas._close()
