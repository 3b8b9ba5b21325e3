"""The seed's full lifecycle on the real default model, and the status machine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llama_isolate import (
    CompletionEvent,
    ContextParams,
    LlamaLoad,
    LlamaParent,
    LlamaStatus,
    LlamaStatusError,
)

from ..helpers.models import children, greedy_load


async def test_seed_full_lifecycle_stream_subscribed_after_send_sees_every_token(model_path: Path) -> None:
    parent = LlamaParent(greedy_load(model_path, n_ctx=2048))  # 1. setup
    assert parent.status is LlamaStatus.UNINITIALIZED
    await parent.init()  # 2. initialize
    assert parent.status is LlamaStatus.READY
    prompt_id = await parent.send_prompt("Why is the sky blue?", max_tokens=48)  # 3. send
    tokens: list[str] = []
    sub = parent.stream.listen(tokens.append)  # 4. listen, after the send returned
    event = await parent.wait_for_completion(prompt_id)  # 5. wait
    sub.cancel()  # 6. cleanup
    await parent.dispose()

    assert event.success, event.error
    assert event.prompt_id == prompt_id
    assert event.text.strip()
    assert "".join(tokens) == event.text
    assert event.completion_tokens > 0
    assert event.prompt_tokens > 5
    assert event.timings.first_token_s is not None
    assert 0 <= event.timings.queued_s <= event.timings.first_token_s <= event.timings.total_s
    assert parent.status is LlamaStatus.DISPOSED


async def test_status_is_generating_while_a_prompt_runs_then_ready(parent: LlamaParent) -> None:
    statuses: list[LlamaStatus] = []
    pid = await parent.send_prompt("Count from one to twenty.", max_tokens=24)
    assert parent.status is LlamaStatus.GENERATING
    assert parent.is_generating
    parent.stream.listen(lambda _: statuses.append(parent.status))
    await parent.wait_for_completion(pid)
    assert statuses
    assert set(statuses) == {LlamaStatus.GENERATING}
    assert parent.status is LlamaStatus.READY
    assert not parent.is_generating


async def test_wait_for_completion_after_the_event_and_for_unknown_ids(parent: LlamaParent) -> None:
    pid = await parent.send_prompt("Hi", max_tokens=4)
    events: list[CompletionEvent] = []
    parent.completions.listen(events.append)
    first = await parent.wait_for_completion(pid)
    again = await parent.wait_for_completion(pid)  # long after it happened
    assert again is first
    assert events == [first]
    with pytest.raises(KeyError, match="nope"):
        await parent.wait_for_completion("nope")


async def test_cancelling_wait_for_completion_does_not_cancel_the_prompt(parent: LlamaParent) -> None:
    pid = await parent.send_prompt("Tell me about rivers.", max_tokens=16)
    waiter = asyncio.create_task(parent.wait_for_completion(pid))
    await asyncio.sleep(0)
    waiter.cancel()
    event = await parent.wait_for_completion(pid)
    assert event.success
    assert event.finish_reason == "length"
    assert event.completion_tokens == 16


async def test_parent_messages_hold_the_default_conversation(parent: LlamaParent) -> None:
    first = await parent.send_prompt("My name is Ada.", max_tokens=8)
    second = await parent.send_prompt("What is my name?", max_tokens=8)
    e1 = await parent.wait_for_completion(first)
    e2 = await parent.wait_for_completion(second)
    assert parent.messages == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": e1.text},
        {"role": "user", "content": "What is my name?"},
        {"role": "assistant", "content": e2.text},
    ]
    # The second turn carries the first, which it finds in the KV cache.
    assert e2.cached_tokens + e2.prompt_tokens > e1.prompt_tokens + e1.completion_tokens
    assert e2.cached_tokens > e1.prompt_tokens


async def test_async_with_inits_and_disposes(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=1024)) as parent:
        assert parent.status is LlamaStatus.READY
        pid = parent.worker_pid
        assert pid is not None
        assert pid in [c.pid for c in children()]
    assert parent.status is LlamaStatus.DISPOSED
    assert parent.worker_pid is None
    assert pid not in [c.pid for c in children()]


async def test_dispose_is_idempotent_and_fails_queued_prompts_with_events(model_path: Path) -> None:
    parent = LlamaParent(greedy_load(model_path, n_ctx=1024))
    await parent.init()
    worker = parent.worker_pid
    running = await parent.send_prompt("Write a long story about a dragon.", max_tokens=400)
    queued = [await parent.send_prompt(f"Question {i}?", max_tokens=4) for i in range(3)]
    first_token = asyncio.Event()
    parent.stream.listen(lambda _: first_token.set())
    await first_token.wait()
    events: list[CompletionEvent] = []
    parent.completions.listen(events.append)
    await parent.dispose()
    await parent.dispose()
    assert {e.prompt_id for e in events} == {running, *queued}
    assert len(events) == 4
    assert all(e.finish_reason == "cancelled" for e in events)
    assert [(await parent.wait_for_completion(pid)).finish_reason for pid in queued] == ["cancelled"] * 3
    assert worker not in [c.pid for c in children()]
    assert parent.stream.closed
    assert parent.completions.closed


async def test_init_twice_is_a_status_error(parent: LlamaParent) -> None:
    with pytest.raises(LlamaStatusError, match="once"):
        await parent.init()


async def test_send_before_init_and_after_dispose_raise_status_errors(model_path: Path) -> None:
    parent = LlamaParent(greedy_load(model_path, n_ctx=1024))
    with pytest.raises(LlamaStatusError, match="init"):
        await parent.send_prompt("hi")
    with pytest.raises(LlamaStatusError, match="init"):
        await parent.get_embeddings("hi")
    await parent.init()
    await parent.dispose()
    with pytest.raises(LlamaStatusError, match="disposed"):
        await parent.send_prompt("hi")
    with pytest.raises(LlamaStatusError, match="disposed"):
        parent.get_scope()
    with pytest.raises(LlamaStatusError):
        await parent.init()


async def test_dispose_before_init_needs_no_worker(model_path: Path) -> None:
    parent = LlamaParent(greedy_load(model_path))
    await parent.dispose()
    assert parent.status is LlamaStatus.DISPOSED
    assert not children()


def test_the_parent_runs_on_uvloop(model_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")  # uvicorn runs on it whenever it is installed

    async def main() -> str:
        async with LlamaParent(LlamaLoad(path=model_path, context_params=ContextParams(n_ctx=256))) as parent:
            event = await parent.wait_for_completion(await parent.send_prompt("Hi", max_tokens=3))
            assert event.success, event.error
            return event.text

    assert uvloop.run(main())
