"""stop() and scope.stop(): fast, precise, and nothing left hanging."""

from __future__ import annotations

import asyncio
import time

import psutil

from llama_isolate import CompletionEvent, LlamaParent

from ..helpers.models import first_token

LONG_PROMPT = "Summarize this text. " + " ".join(f"Item {i} is a small red box on a shelf." for i in range(110))


async def test_stop_right_after_the_first_token_ends_the_prompt_quickly(parent: LlamaParent) -> None:
    pid = await parent.send_prompt("Write a very long essay about the ocean.", max_tokens=1000)
    await first_token(parent)
    started = time.perf_counter()
    await parent.stop()
    event = await parent.wait_for_completion(pid)
    elapsed = time.perf_counter() - started
    assert event.success
    assert event.finish_reason == "stopped"
    assert 0 < event.completion_tokens < 1000
    assert elapsed < 0.3, f"stop took {elapsed * 1000:.0f} ms"
    assert parent.status.value == "ready"


async def test_stop_during_prompt_processing_of_a_long_prompt(parent: LlamaParent) -> None:
    assert parent.worker_pid is not None
    worker = psutil.Process(parent.worker_pid)
    busy_before = sum(worker.cpu_times()[:2])
    pid = await parent.send_prompt(LONG_PROMPT, max_tokens=50)
    # The worker is inside the prompt once it has spent CPU on it (its ~1800
    # tokens take far longer than this).
    while sum(worker.cpu_times()[:2]) - busy_before < 0.05:
        await asyncio.sleep(0.005)
    t0 = time.perf_counter()
    await parent.stop()
    event = await parent.wait_for_completion(pid)
    elapsed = time.perf_counter() - t0
    assert event.finish_reason == "stopped"
    assert event.completion_tokens == 0  # it never got past the prompt
    assert event.text == ""
    assert event.prompt_tokens < 1400  # not all of the prompt was processed
    assert elapsed < 0.3, f"stop took {elapsed * 1000:.0f} ms"


async def test_stop_leaves_queued_prompts_queued(parent: LlamaParent) -> None:
    running = await parent.send_prompt("Write a long poem.", max_tokens=500)
    queued = await parent.send_prompt("Say yes.", max_tokens=4)
    await first_token(parent)
    await parent.stop()
    assert (await parent.wait_for_completion(running)).finish_reason == "stopped"
    after = await parent.wait_for_completion(queued)
    assert after.success
    assert after.finish_reason in ("stop", "length")
    assert after.completion_tokens > 0


async def test_stop_with_nothing_running_does_nothing(parent: LlamaParent) -> None:
    await parent.stop()
    pid = await parent.send_prompt("Hello", max_tokens=3)
    assert (await parent.wait_for_completion(pid)).success


async def test_stopped_turn_keeps_its_partial_reply_in_the_history(parent: LlamaParent) -> None:
    scope = parent.get_scope()
    pid = await scope.send_prompt("Write a long story.", max_tokens=500)
    await first_token(parent)
    await parent.stop()
    event = await parent.wait_for_completion(pid)
    assert scope.messages == [
        {"role": "user", "content": "Write a long story."},
        {"role": "assistant", "content": event.text},
    ]


async def test_scope_stop_cancels_its_running_and_queued_prompts_only(parent: LlamaParent) -> None:
    a, b = parent.get_scope(), parent.get_scope()
    a_running = await a.send_prompt("Write a long story about cats.", max_tokens=500)
    b_queued = await b.send_prompt("Say hello.", max_tokens=6)
    a_queued = await a.send_prompt("And dogs?", max_tokens=6)
    events: list[CompletionEvent] = []
    a.completions.listen(events.append)
    await first_token(parent)
    await a.stop()
    assert {e.prompt_id: e.finish_reason for e in events} == {a_running: "cancelled", a_queued: "cancelled"}
    cancelled_queued = await parent.wait_for_completion(a_queued)
    assert cancelled_queued.success
    assert cancelled_queued.text == ""
    assert cancelled_queued.completion_tokens == 0
    b_event = await parent.wait_for_completion(b_queued)
    assert b_event.finish_reason == "length"
    assert b_event.text
