"""Backpressure, context limits, cancellation, prompt dispose and resource hygiene."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import psutil
import pytest

from llama_isolate import (
    CompletionEvent,
    LlamaLoad,
    LlamaLoadError,
    LlamaParent,
    LlamaQueueFull,
    LlamaStatus,
)

from ..helpers.models import children, first_token, greedy_load


async def test_max_queue_refuses_at_once_and_changes_nothing(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=1024), max_queue=2) as parent:
        running = await parent.send_prompt("Write a long story.", max_tokens=40)
        queued = [await parent.send_prompt(f"Question {i}?", max_tokens=3) for i in range(2)]
        assert parent.queue_length == 2
        with pytest.raises(LlamaQueueFull, match="max_queue=2"):
            await parent.send_prompt("one too many")
        assert parent.queue_length == 2
        assert parent.messages[-1]["content"] == "Write a long story."
        events = [await parent.wait_for_completion(i) for i in (running, *queued)]
        assert all(e.success for e in events)
        assert len(parent.messages) == 6  # the refused prompt left no trace
        late = await parent.send_prompt("Room again?", max_tokens=3)
        assert (await parent.wait_for_completion(late)).success


async def test_a_prompt_too_long_for_the_context_fails_alone_with_the_counts(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=256)) as parent:
        too_long = await parent.send_prompt("word " * 400, max_tokens=8)
        after = await parent.send_prompt("Hello", max_tokens=3)
        bad, good = await parent.wait_for_completion(too_long), await parent.wait_for_completion(after)
    assert not bad.success
    assert bad.finish_reason == "error"
    assert bad.error is not None
    assert "needs" in bad.error and "holds 256" in bad.error
    assert bad.error_code == "context_length_exceeded"
    assert good.success
    assert good.error_code is None
    assert parent.messages[0] == {"role": "user", "content": "Hello"}


async def test_a_conversation_past_the_context_drops_its_oldest_turns(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=512)) as parent:
        scope = parent.get_scope()
        scope.messages.append({"role": "system", "content": "You answer briefly."})
        events: list[CompletionEvent] = []
        for i in range(14):
            text = f"Fact number {i}: the {i}th box holds {i * 7} marbles of many colors, mostly blue."
            events.append(await parent.wait_for_completion(await scope.send_prompt(text, max_tokens=16)))
    assert all(e.success for e in events)
    assert events[0].dropped_turns == 0
    cut = [e for e in events if e.dropped_turns]
    assert cut, "the conversation never outgrew 512 tokens"
    assert all(e.prompt_tokens + e.cached_tokens <= 512 - 16 for e in events)
    assert len(scope.messages) == 1 + 2 * 14  # the parent keeps every turn
    assert scope.messages[0]["role"] == "system"
    # The cut goes down to half the window, so the next turns reuse the cut
    # prefix from the KV cache instead of re-processing everything.
    after_first_cut = events[events.index(cut[0]) + 1]
    assert after_first_cut.dropped_turns == cut[0].dropped_turns
    assert after_first_cut.cached_tokens > 0


async def test_a_corrupt_gguf_is_a_load_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + random.Random(1).randbytes(200_000))
    parent = LlamaParent(LlamaLoad(path=corrupt))
    with pytest.raises(LlamaLoadError, match=r"corrupt\.gguf"):
        await parent.init()
    assert parent.status is LlamaStatus.ERROR
    assert not children()


async def test_dispose_mid_generation_returns_promptly_with_every_event(model_path: Path) -> None:
    parent = LlamaParent(greedy_load(model_path, n_ctx=1024, n_parallel=2))
    await parent.init()
    ids = [await parent.get_scope().send_prompt("Write a long story.", max_tokens=500) for _ in range(4)]
    await first_token(parent)
    events: list[CompletionEvent] = []
    parent.completions.listen(events.append)
    started = time.perf_counter()
    await parent.dispose()
    assert time.perf_counter() - started < 2.0
    assert sorted(e.prompt_id for e in events) == sorted(ids)
    assert {e.finish_reason for e in events} == {"cancelled"}
    assert not children()


async def test_fifteen_init_dispose_cycles_leak_no_process_and_no_descriptor(model_path: Path) -> None:
    me = psutil.Process()
    load = greedy_load(model_path, n_ctx=256)
    async with LlamaParent(load) as warm:  # let lazily created things (executors, ...) exist first
        await warm.wait_for_completion(await warm.send_prompt("Hi", max_tokens=2))
    fds = me.num_fds()
    for _ in range(15):
        async with LlamaParent(load) as parent:
            await parent.wait_for_completion(await parent.send_prompt("Hi", max_tokens=2))
    assert not children()
    assert me.num_fds() <= fds


async def test_a_storm_of_300_prompts_with_random_scope_stops_gets_one_event_each(model_path: Path) -> None:
    rng = random.Random(7)
    async with LlamaParent(greedy_load(model_path, n_ctx=512, n_parallel=4)) as parent:
        scopes = [parent.get_scope() for _ in range(10)]
        seen: list[str] = []
        parent.completions.listen(lambda e: seen.append(e.prompt_id))
        sent: list[str] = []
        for i in range(300):
            scope = rng.choice(scopes)
            sent.append(await scope.send_prompt(f"Say {i}.", max_tokens=rng.randint(1, 4)))
            if rng.random() < 0.15:
                await rng.choice(scopes).stop()
            if i % 25 == 0:
                await asyncio.sleep(0)
        events = await asyncio.wait_for(asyncio.gather(*(parent.wait_for_completion(p) for p in sent)), 240)
        assert sorted(seen) == sorted(sent)  # exactly one event per prompt: none lost, none twice
        assert len(set(seen)) == 300
        assert {e.finish_reason for e in events} <= {"stop", "length", "cancelled"}
        assert any(e.finish_reason == "cancelled" for e in events)
        assert parent.status is LlamaStatus.READY
        after = await parent.wait_for_completion(await parent.send_prompt("Still here?", max_tokens=3))
        assert after.success


async def test_cancelling_init_kills_the_worker(model_path: Path) -> None:
    parent = LlamaParent(greedy_load(model_path, n_ctx=256))
    loading = asyncio.Event()
    init = asyncio.create_task(parent.init(on_progress=lambda _: loading.set()))
    await loading.wait()
    assert parent.worker_pid is not None
    init.cancel()
    with pytest.raises(asyncio.CancelledError):
        await init
    assert parent.status is LlamaStatus.ERROR
    assert not children()
    await parent.restart()  # the parent can still be brought up
    await parent.dispose()


async def test_cancelling_get_embeddings_abandons_only_that_result(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=512, embeddings=True)) as parent:
        task = asyncio.create_task(parent.get_embeddings("some text " * 50))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(await parent.get_embeddings("fine")) == 576


async def test_cancelling_stop_still_stops(parent: LlamaParent) -> None:
    pid = await parent.send_prompt("Write a long story.", max_tokens=500)
    await first_token(parent)
    stopping = asyncio.create_task(parent.stop())
    await asyncio.sleep(0)
    stopping.cancel()
    event = await parent.wait_for_completion(pid)
    assert event.finish_reason == "stopped"


async def test_cancelling_dispose_still_disposes(model_path: Path) -> None:
    parent = LlamaParent(greedy_load(model_path, n_ctx=256))
    await parent.init()
    pid = await parent.send_prompt("Write a long story.", max_tokens=500)
    await first_token(parent)
    disposing = asyncio.create_task(parent.dispose())
    await asyncio.sleep(0)
    disposing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await disposing
    assert parent.status is LlamaStatus.DISPOSED
    assert (await parent.wait_for_completion(pid)).finish_reason == "cancelled"
    for _ in range(100):  # the killed worker is reaped by its watcher thread
        if not children():
            break
        await asyncio.sleep(0.01)
    assert not children()


async def test_keep_completed_bounds_what_wait_for_completion_remembers(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=256), keep_completed=2) as parent:
        ids = [await parent.get_scope().send_prompt("Hi", max_tokens=1) for _ in range(3)]
        last = await parent.wait_for_completion(ids[-1])
        assert await parent.wait_for_completion(ids[1])
        assert await parent.wait_for_completion(ids[2]) is last
        with pytest.raises(KeyError, match=r"keep_completed"):
            await parent.wait_for_completion(ids[0])


def test_keep_completed_must_be_a_count(model_path: Path) -> None:
    with pytest.raises(ValueError, match="keep_completed"):
        LlamaParent(LlamaLoad(path=model_path), keep_completed=-1)


async def test_restart_on_crash_queues_prompts_sent_while_it_restarts(model_path: Path) -> None:
    parent = LlamaParent(greedy_load(model_path, n_ctx=512), restart_on_crash=True)
    await parent.init()
    try:
        running = await parent.send_prompt("Write a long story.", max_tokens=400)
        await first_token(parent)
        pid = parent.worker_pid
        assert pid is not None
        os.kill(pid, 9)
        failed = await parent.wait_for_completion(running)
        assert not failed.success
        during = await parent.send_prompt("Hello again", max_tokens=3)  # the worker is restarting now
        assert (await asyncio.wait_for(parent.wait_for_completion(during), 30)).success
    finally:
        await parent.dispose()
