"""SyncLlamaParent: the same API with blocking methods, for code without asyncio.

An event loop runs in a daemon thread owned by the facade; every method hands
its coroutine to that loop and waits for the result. Stream callbacks run on
that thread, so a GUI must hand tokens over to its own thread (Qt: emit a
signal; Tk: ``root.after(0, ...)``), and iterating a stream blocks until the
next item.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ._errors import LlamaStatusError
from ._events import CompletionEvent, Embedding, LlamaStatus, ModelInfo, TokenLogprob, ToolCallDelta
from ._handle import PromptHandle
from ._images import LlamaImage
from ._options import PromptFields, PromptOptions, takes_prompt_fields
from ._params import LlamaLoad
from ._parent import LlamaParent, ParentSettings
from ._scope import LlamaScope
from ._streams import EventStream, Subscription

if TYPE_CHECKING:
    from typing_extensions import Unpack

T = TypeVar("T")
_CLOSED = object()


class _Read(Generic[T]):
    """A read-only attribute of a blocking facade, read from the asyncio object it wraps (with that one's docs).

    Example::

        status = _Read[LlamaStatus]("_parent", LlamaParent.status.__doc__)  # in SyncLlamaParent
    """

    def __init__(self, wrapped: str, doc: str | None) -> None:
        self._wrapped = wrapped
        self._name = ""
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Read[T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> _Read[T] | T:
        if obj is None:
            return self
        value: T = getattr(getattr(obj, self._wrapped), self._name)
        return value


class _LoopThread:
    """An asyncio event loop running in its own daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.closed = False
        self._thread = threading.Thread(target=self._run, name="llama-isolate-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self.closed:
            coroutine.close()  # never started: no "was never awaited" warning
            raise LlamaStatusError("this SyncLlamaParent was disposed")
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a SyncLlamaParent method was called from its own stream callback; that would deadlock")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout} s") from None
        except KeyboardInterrupt:
            future.cancel()  # Ctrl-C in the caller's thread cancels the await, as in asyncio
            raise

    def soon(self, callback: Callable[[], object]) -> None:
        """Run `callback` on the loop thread, unless the loop is gone."""
        if not self.closed:
            self.loop.call_soon_threadsafe(callback)

    def stop(self) -> None:
        """Cancel and finish whatever still runs on the loop, then end the thread; idempotent."""
        if self.closed:
            return
        self.closed = True
        finishing = asyncio.run_coroutine_threadsafe(_cancel_all_tasks(), self.loop)
        try:
            finishing.result(timeout=5)
        except BaseException:  # noqa: S110 - a second Ctrl-C here must still end the thread
            pass
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self.loop.close()


async def _cancel_all_tasks() -> None:
    """Cancel every other task on the loop and wait for them, so none is destroyed while pending."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class SyncStream(Generic[T]):
    """A blocking view of a `TokenStream` or `EventStream`.

    ``listen(callback)`` calls `callback(item)` on the facade's loop thread;
    ``for item in stream`` blocks for each item and ends when the stream closes.

    Example::

        for token in scope.stream:   # in a worker thread of your GUI
            window.append(token)
    """

    def __init__(self, stream: EventStream[T], loop: _LoopThread) -> None:
        self._stream = stream
        self._loop = loop

    def listen(self, callback: Callable[[T], object]) -> Subscription:
        """Call `callback(item)` (on the facade's loop thread) for every item from now on."""

        async def subscribe() -> Subscription:
            return self._stream.listen(callback)

        return self._loop.call(subscribe())

    def __iter__(self) -> Iterator[T]:
        items: queue.SimpleQueue[object] = queue.SimpleQueue()

        async def subscribe() -> Subscription:
            subscription = self._stream._subscribe(items.put, on_close=lambda: items.put(_CLOSED))
            if not subscription.active:
                items.put(_CLOSED)
            return subscription

        subscription = self._loop.call(subscribe())
        try:
            while (item := items.get()) is not _CLOSED:
                yield item  # type: ignore[misc]
        finally:
            self._loop.soon(subscription.cancel)


class SyncPromptHandle:
    """A blocking `PromptHandle`: iterate it for the pieces, read `event` for the end, `cancel()` to stop.

    Example::

        with parent.generate("Hello!") as handle:
            for piece in handle:
                print(piece, end="")
            event = handle.event
    """

    def __init__(self, handle: PromptHandle, loop: _LoopThread) -> None:
        self._handle = handle
        self._loop = loop

    @property
    def id(self) -> str:
        """The prompt's id."""
        return self._handle.id

    @property
    def done(self) -> bool:
        """True once the prompt has ended."""
        return self._handle.done

    @property
    def event(self) -> CompletionEvent:
        """The prompt's `CompletionEvent`; blocks until the prompt ends (see `wait` for a timeout)."""
        return self.wait()

    def wait(self, timeout: float | None = None) -> CompletionEvent:
        """Block until the prompt's event (`TimeoutError` after `timeout` seconds; the prompt goes on)."""

        async def event() -> CompletionEvent:
            return await self._handle.event

        if self._handle.done:  # also once the parent (and its loop thread) is gone
            return self._handle._ended()
        return self._loop.call(event(), timeout)

    def take_logprobs(self) -> list[TokenLogprob]:
        """The `TokenLogprob` entries that came since the last call (see `PromptHandle.take_logprobs`)."""

        async def take() -> list[TokenLogprob]:
            return self._handle.take_logprobs()

        return self._loop.call(take())

    def __iter__(self) -> Iterator[str | ToolCallDelta]:
        async def step() -> object:
            try:
                return await self._handle.__anext__()
            except StopAsyncIteration:
                return _CLOSED

        if self._loop.closed:  # the parent is gone: what came before its end is all there is
            yield from self._handle._left()
            return
        while (piece := self._loop.call(step())) is not _CLOSED:
            yield piece  # type: ignore[misc]  # only pieces and _CLOSED come back

    def cancel(self) -> None:
        """Stop the prompt wherever it is; returns once its event is out."""
        self._loop.call(self._handle.cancel())

    def __enter__(self) -> SyncPromptHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._loop.closed:
            self.cancel()


class SyncLlamaScope:
    """A blocking `LlamaScope`: one conversation on a `SyncLlamaParent`.

    Example::

        scope = parent.get_scope()
        event = scope.wait_for_completion(scope.send_prompt("Hello!"))
    """

    def __init__(self, scope: LlamaScope, loop: _LoopThread) -> None:
        self._scope = scope
        self._loop = loop
        self.stream: SyncStream[str] = SyncStream(scope.stream, loop)
        """This scope's tokens (blocking iteration, callbacks on the loop thread)."""
        self.token_logprobs: SyncStream[TokenLogprob] = SyncStream(scope.token_logprobs, loop)
        """This scope's tokens with their log probabilities (prompts sent with ``logprobs=k``)."""
        self.tool_call_deltas: SyncStream[ToolCallDelta] = SyncStream(scope.tool_call_deltas, loop)
        """This scope's tool calls as they are written (see `ToolCallDelta`)."""
        self.completions: SyncStream[CompletionEvent] = SyncStream(scope.completions, loop)
        """This scope's completion events."""

    id = _Read[str]("_scope", "The scope's id.")
    messages = _Read[list[dict[str, Any]]]("_scope", "This conversation's history (see `LlamaScope.messages`).")

    @property
    def trim_history(self) -> bool:
        """Whether this conversation loses its oldest turns when it outgrows the context (see
        `LlamaScope.trim_history`)."""
        return self._scope.trim_history

    @trim_history.setter
    def trim_history(self, value: bool) -> None:
        self._scope.trim_history = value

    @takes_prompt_fields
    def send_prompt(
        self, prompt: str, *, options: PromptOptions | None = None, **overrides: Unpack[PromptFields]
    ) -> str:
        """Queue a turn; returns its prompt id at once (see `LlamaScope.send_prompt`)."""
        return self._loop.call(self._scope.send_prompt(prompt, options=options, **overrides))

    @takes_prompt_fields
    def send_prompt_with_images(
        self,
        prompt: str,
        images: Sequence[LlamaImage],
        /,
        *,
        options: PromptOptions | None = None,
        **overrides: Unpack[PromptFields],
    ) -> str:
        """Queue a turn with images; returns its prompt id at once."""
        return self._loop.call(self._scope.send_prompt_with_images(prompt, images, options=options, **overrides))

    @takes_prompt_fields
    def generate(
        self, prompt: str, options: PromptOptions | None = None, **overrides: Unpack[PromptFields]
    ) -> SyncPromptHandle:
        """A turn of this conversation with its handle (see `LlamaScope.generate`)."""

        async def make() -> PromptHandle:
            return self._scope.generate(prompt, options, **overrides)

        return SyncPromptHandle(self._loop.call(make()), self._loop)

    def wait_for_completion(self, prompt_id: str, timeout: float | None = None) -> CompletionEvent:
        """Block until the prompt's event (`TimeoutError` after `timeout` seconds)."""
        return self._loop.call(self._scope.parent.wait_for_completion(prompt_id), timeout)

    def cancel(self) -> None:
        """Cancel this scope's running and queued prompts (see `LlamaScope.cancel`)."""
        self._loop.call(self._scope.cancel())

    def stop(self) -> None:
        """The first name of `cancel()`: the same call."""
        self.cancel()

    def clear(self) -> None:
        """Forget the conversation and its KV cache."""
        self._loop.call(self._scope.clear())

    def save_state(self) -> bytes:
        """The conversation and its KV cache as bytes."""
        return self._loop.call(self._scope.save_state())

    def load_state(self, data: bytes) -> None:
        """Replace the conversation with a saved one."""
        self._loop.call(self._scope.load_state(data))

    def dispose(self) -> None:
        """Stop, close the streams, free the conversation in the worker."""
        self._loop.call(self._scope.dispose())


class SyncLlamaParent:
    """`LlamaParent` with blocking methods, for scripts and GUI toolkits without asyncio.

    Same options and members as `LlamaParent`. Stream callbacks run on a
    background thread; hand them to your UI thread (Qt: a signal, Tk:
    ``root.after``). Use it as a context manager, or call `dispose()`.

    Example::

        with SyncLlamaParent(LlamaLoad(path=default_model_path())) as parent:
            parent.stream.listen(lambda t: print(t, end="", flush=True))
            event = parent.wait_for_completion(parent.send_prompt("Hello!"))
    """

    def __init__(self, load: LlamaLoad, **settings: Unpack[ParentSettings]) -> None:
        self._loop = _LoopThread()

        async def make() -> LlamaParent:
            return LlamaParent(load, **settings)

        try:
            self._parent = self._loop.call(make())
        except BaseException:
            self._loop.stop()
            raise
        self.stream: SyncStream[str] = SyncStream(self._parent.stream, self._loop)
        """Every generated piece of text (blocking iteration, callbacks on the loop thread)."""
        self.token_logprobs: SyncStream[TokenLogprob] = SyncStream(self._parent.token_logprobs, self._loop)
        """Each generated token of prompts sent with ``logprobs=k``, as a `TokenLogprob`."""
        self.tool_call_deltas: SyncStream[ToolCallDelta] = SyncStream(self._parent.tool_call_deltas, self._loop)
        """The tool calls of prompts sent with ``tools=``, as they are written (`ToolCallDelta`)."""
        self.completions: SyncStream[CompletionEvent] = SyncStream(self._parent.completions, self._loop)
        """One `CompletionEvent` per finished prompt."""
        self.default_scope = SyncLlamaScope(self._parent.default_scope, self._loop)
        """The parent's own conversation (see `LlamaParent.default_scope`)."""

    def __enter__(self) -> SyncLlamaParent:
        try:
            self.init()
        except BaseException:
            self.dispose()  # __exit__ is not called when __enter__ raises: end the loop thread here
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.dispose()

    status = _Read[LlamaStatus]("_parent", LlamaParent.status.__doc__)
    error = _Read[str | None]("_parent", LlamaParent.error.__doc__)
    is_generating = _Read[bool]("_parent", LlamaParent.is_generating.__doc__)
    messages = _Read[list[dict[str, Any]]]("_parent", LlamaParent.messages.__doc__)
    queue_length = _Read[int]("_parent", LlamaParent.queue_length.__doc__)
    worker_pid = _Read[int | None]("_parent", LlamaParent.worker_pid.__doc__)
    model_info = _Read[ModelInfo | None]("_parent", LlamaParent.model_info.__doc__)

    @property
    def parent(self) -> LlamaParent:
        """The asyncio `LlamaParent` underneath (use it only from its loop thread)."""
        return self._parent

    def init(self, *, timeout: float | None = None, on_progress: Callable[[float], object] | None = None) -> None:
        """Spawn the worker and load the model (see `LlamaParent.init`)."""
        self._loop.call(self._parent.init(timeout=timeout, on_progress=on_progress))

    def restart(self, *, timeout: float | None = None) -> None:
        """A fresh worker after an ERROR."""
        self._loop.call(self._parent.restart(timeout=timeout))

    @takes_prompt_fields
    def send_prompt(
        self,
        prompt: str,
        *,
        scope: SyncLlamaScope | None = None,
        options: PromptOptions | None = None,
        **overrides: Unpack[PromptFields],
    ) -> str:
        """Queue one chat turn; returns its prompt id at once (see `LlamaParent.send_prompt`)."""
        inner = None if scope is None else scope._scope
        return self._loop.call(self._parent.send_prompt(prompt, scope=inner, options=options, **overrides))

    @takes_prompt_fields
    def send_prompt_with_images(
        self,
        prompt: str,
        images: Sequence[LlamaImage],
        /,
        *,
        scope: SyncLlamaScope | None = None,
        options: PromptOptions | None = None,
        **overrides: Unpack[PromptFields],
    ) -> str:
        """Queue one chat turn with images; returns its prompt id at once."""
        inner = None if scope is None else scope._scope
        sending = self._parent.send_prompt_with_images(prompt, images, scope=inner, options=options, **overrides)
        return self._loop.call(sending)

    @takes_prompt_fields
    def generate(
        self,
        messages_or_prompt: str | Sequence[Mapping[str, Any]],
        options: PromptOptions | None = None,
        **overrides: Unpack[PromptFields],
    ) -> SyncPromptHandle:
        """One prompt on a conversation of its own, with its handle (see `LlamaParent.generate`).

        Example::

            with parent.generate("Name three rivers.", max_tokens=32) as handle:
                text = "".join(piece for piece in handle if isinstance(piece, str))
                print(handle.event.finish_reason)
        """

        async def make() -> PromptHandle:
            return self._parent.generate(messages_or_prompt, options, **overrides)

        return SyncPromptHandle(self._loop.call(make()), self._loop)

    def wait_for_completion(self, prompt_id: str, timeout: float | None = None) -> CompletionEvent:
        """Block until the prompt's event (`TimeoutError` after `timeout` seconds; the prompt goes on)."""
        return self._loop.call(self._parent.wait_for_completion(prompt_id), timeout)

    def stop(self) -> None:
        """Abort the prompts being decoded now."""
        self._loop.call(self._parent.stop())

    def cached_tokens(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """How many tokens of the prompt `messages` make a KV cache holds (see `LlamaParent.cached_tokens`)."""
        return self._loop.call(self._parent.cached_tokens(messages))

    def get_embeddings(self, text: str, *, normalize: bool = False) -> list[float]:
        """The embedding of `text` (needs `ContextParams(embeddings=True)`)."""
        return self._loop.call(self._parent.get_embeddings(text, normalize=normalize))

    def embed(self, text: str, *, normalize: bool = False) -> Embedding:
        """The embedding of `text` and its token count (see `LlamaParent.embed`)."""
        return self._loop.call(self._parent.embed(text, normalize=normalize))

    def get_scope(self) -> SyncLlamaScope:
        """A new conversation."""

        async def make() -> LlamaScope:
            return self._parent.get_scope()

        return SyncLlamaScope(self._loop.call(make()), self._loop)

    def dispose(self) -> None:
        """Stop everything, end the worker and the loop thread; idempotent.

        Every other method raises `LlamaStatusError` afterwards.
        """
        if self._loop.closed:
            return
        try:
            self._loop.call(self._parent.dispose())
        finally:
            self._loop.stop()


# help() and editors see LlamaParent's keywords, which are written once, there.
SyncLlamaParent.__init__.__signature__ = inspect.signature(LlamaParent.__init__)  # type: ignore[attr-defined]
