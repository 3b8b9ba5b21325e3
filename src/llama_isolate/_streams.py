"""Broadcast streams: every subscriber sees every item emitted after it subscribed.

Emitting never blocks: callbacks run at once on the event loop's thread, and
each async iterator has its own unbounded buffer, so a slow reader delays
nobody but itself.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

from ._errors import LlamaTypeError

T = TypeVar("T")

logger = logging.getLogger("llama_isolate")


class Subscription:
    """A `listen()` registration; `cancel()` ends it (idempotent).

    Example::

        sub = parent.stream.listen(lambda token: print(token, end=""))
        ...
        sub.cancel()
    """

    def __init__(self, on_cancel: Callable[[Subscription], None]) -> None:
        self._on_cancel: Callable[[Subscription], None] | None = on_cancel

    @property
    def active(self) -> bool:
        """True until `cancel()` is called or the stream closes."""
        return self._on_cancel is not None

    def cancel(self) -> None:
        """Stop receiving items. Safe to call more than once."""
        on_cancel, self._on_cancel = self._on_cancel, None
        if on_cancel is not None:
            on_cancel(self)


class _StreamIterator(Generic[T]):
    """One `async for` over a stream: a private buffer fed by the stream."""

    def __init__(self, stream: EventStream[T]) -> None:
        self._stream: EventStream[T] | None = stream
        self._items: collections.deque[T] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def _push(self, item: T) -> None:
        self._items.append(item)
        self._wake()

    def _close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _unsubscribe(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream._iterators.discard(self)

    def __aiter__(self) -> _StreamIterator[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._closed or self._stream is None:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                # A cancelled reader is gone for good: stop buffering for it.
                self._unsubscribe()
                raise
            finally:
                self._waiter = None
        return self._items.popleft()


class EventStream(Generic[T]):
    """A broadcast stream of items of type T.

    ``async for item in stream`` subscribes for as long as the loop runs (a
    `break` or a cancelled task unsubscribes); ``stream.listen(callback)``
    calls ``callback(item)`` on the event loop's thread until the returned
    `Subscription` is cancelled. A subscriber sees the items emitted after it
    subscribed. Iteration ends when the stream closes (its owner was disposed).

    Example::

        async for event in parent.completions:
            print(event.prompt_id, event.success)
    """

    def __init__(self) -> None:
        self._callbacks: dict[Subscription, Callable[[T], object]] = {}
        # Weak: an iterator dropped by `break` leaves the stream by itself.
        self._iterators: weakref.WeakSet[_StreamIterator[T]] = weakref.WeakSet()
        self._closers: dict[Subscription, Callable[[], object]] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once the stream's owner was disposed; nothing more will be emitted."""
        return self._closed

    def listen(self, callback: Callable[[T], object]) -> Subscription:
        """Call `callback(item)` for every item from now on; returns the `Subscription`.

        The callback is a plain function, called on the event loop's thread;
        an exception it raises (even `asyncio.CancelledError`) is logged and
        reaches neither the other subscribers nor the library. Listening to
        a closed stream returns an inactive subscription.

        Raises:
            TypeError: `callback` is not callable, or is an ``async def``
                function (whose coroutine nobody would await: use ``async
                for`` over the stream instead).

        Example::

            sub = scope.stream.listen(chunks.append)
        """
        return self._subscribe(callback)

    def _subscribe(self, callback: Callable[[T], object], on_close: Callable[[], object] | None = None) -> Subscription:
        """`listen`, and call `on_close()` if the stream closes while subscribed."""
        if not callable(callback):
            raise LlamaTypeError(f"listen() needs a callable, got {type(callback).__name__}", param="callback")
        if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(getattr(callback, "__call__", None)):  # noqa: B004
            raise LlamaTypeError(
                "listen() needs a plain function; an async one would never be awaited. "
                "Iterate the stream with `async for` instead.",
                param="callback",
            )
        subscription = Subscription(self._drop_callback)
        if self._closed:
            subscription.cancel()
            return subscription
        self._callbacks[subscription] = callback
        if on_close is not None:
            self._closers[subscription] = on_close
        return subscription

    def __aiter__(self) -> AsyncIterator[T]:
        iterator: _StreamIterator[T] = _StreamIterator(self)
        if self._closed:
            iterator._close()
        else:
            self._iterators.add(iterator)
        return iterator

    def _drop_callback(self, subscription: Subscription) -> None:
        self._callbacks.pop(subscription, None)
        self._closers.pop(subscription, None)

    def _emit(self, item: T) -> None:
        if self._closed:
            return
        if self._iterators:
            for iterator in list(self._iterators):
                iterator._push(item)
        if self._callbacks:
            for callback in list(self._callbacks.values()):
                _call(callback, item)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for iterator in list(self._iterators):
            iterator._close()
        self._iterators.clear()
        closers = list(self._closers.values())
        for subscription in list(self._callbacks):
            subscription.cancel()
        for closer in closers:
            _call(closer)


def _call(callback: Callable[..., object], *args: object) -> None:
    """Run a caller's callback; whatever it raises or returns, the stream goes on."""
    try:
        result = callback(*args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # CancelledError included: it must not end the library's reader
        logger.exception("a stream listener raised; the stream goes on")
        return
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        logger.error("a stream listener returned an awaitable, which nobody awaits; use `async for` instead")


class TokenStream(EventStream[str]):
    """A broadcast stream of generated text pieces, in the order they were generated.

    Pieces are whole UTF-8 characters: a character split across tokens arrives
    in one piece. Joining every piece of one prompt gives its event's `text`.

    Example::

        sub = parent.stream.listen(lambda piece: print(piece, end="", flush=True))
    """
