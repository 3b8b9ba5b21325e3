"""Broadcast streams: who sees what, and how subscriptions end."""

from __future__ import annotations

import asyncio
import gc

import pytest

from llama_isolate import EventStream, TokenStream


async def test_every_listener_sees_items_emitted_after_it_subscribed() -> None:
    stream = TokenStream()
    stream._emit("before")
    first: list[str] = []
    second: list[str] = []
    stream.listen(first.append)
    stream._emit("a")
    stream.listen(second.append)
    stream._emit("b")
    assert first == ["a", "b"]
    assert second == ["b"]


async def test_cancelled_subscription_receives_nothing_more() -> None:
    stream = TokenStream()
    got: list[str] = []
    sub = stream.listen(got.append)
    stream._emit("a")
    sub.cancel()
    sub.cancel()  # idempotent
    stream._emit("b")
    assert got == ["a"]
    assert not sub.active


async def test_a_raising_listener_does_not_stop_the_others() -> None:
    stream = TokenStream()
    got: list[str] = []

    def bad(_: str) -> None:
        raise RuntimeError("listener bug")

    stream.listen(bad)
    stream.listen(got.append)
    stream._emit("x")
    assert got == ["x"]


async def test_async_iteration_ends_when_the_stream_closes() -> None:
    stream: EventStream[int] = EventStream()
    got: list[int] = []

    iterator = aiter(stream)  # subscribed from here on

    async def consume() -> None:
        async for item in iterator:
            got.append(item)

    task = asyncio.create_task(consume())
    for i in range(3):
        stream._emit(i)
    stream._close()
    await asyncio.wait_for(task, 1)
    assert got == [0, 1, 2]


async def test_iterating_a_closed_stream_ends_at_once_and_listen_is_inactive() -> None:
    stream: EventStream[int] = EventStream()
    stream._close()
    assert [i async for i in stream] == []
    assert not stream.listen(print).active


async def test_break_unsubscribes_the_iterator() -> None:
    stream: EventStream[int] = EventStream()
    iterator = aiter(stream)
    stream._emit(1)
    assert await anext(iterator) == 1
    assert len(stream._iterators) == 1
    del iterator
    gc.collect()
    assert len(stream._iterators) == 0


async def test_cancelling_a_waiting_iteration_unsubscribes_it() -> None:
    stream: EventStream[int] = EventStream()

    async def consume() -> None:
        async for _ in stream:
            pass

    task = asyncio.create_task(consume())
    while not stream._iterators:  # until the consumer waits inside the iteration
        await asyncio.sleep(0)
    assert len(stream._iterators) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(stream._iterators) == 0


async def test_a_slow_iterator_buffers_without_delaying_others() -> None:
    stream: EventStream[int] = EventStream()
    slow = aiter(stream)
    fast: list[int] = []
    stream.listen(fast.append)
    for i in range(1000):
        stream._emit(i)
    assert fast == list(range(1000))  # delivered while `slow` read nothing
    assert [await anext(slow) for _ in range(1000)] == list(range(1000))
