"""A worker that dies: every pending prompt gets an event, nobody waits forever."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from llama_isolate import LlamaParent, LlamaStatus, LlamaStatusError

from ..helpers.models import first_token, greedy_load


async def kill_after_first_token(parent: LlamaParent) -> None:
    await first_token(parent)
    pid = parent.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


async def test_sigkill_mid_generation_fails_running_and_queued_prompts(model_path: Path) -> None:
    parent = LlamaParent(greedy_load(model_path, n_ctx=1024))
    await parent.init()
    try:
        ids = [await parent.send_prompt("Write a long story.", max_tokens=400)]
        ids += [await parent.send_prompt(f"Question {i}", max_tokens=4) for i in range(3)]
        await kill_after_first_token(parent)
        events = await asyncio.wait_for(asyncio.gather(*(parent.wait_for_completion(i) for i in ids)), 2.0)
        assert [e.success for e in events] == [False] * 4
        assert all(e.finish_reason == "error" for e in events)
        assert all(e.error is not None and "SIGKILL" in e.error for e in events)
        assert all(e.error_code == "worker_died" for e in events)
        assert parent.status is LlamaStatus.ERROR
        assert parent.messages == []
        with pytest.raises(LlamaStatusError, match="restart"):
            await parent.send_prompt("hi")
        await parent.restart()
        event = await parent.wait_for_completion(await parent.send_prompt("Hello", max_tokens=3))
        assert event.success
    finally:
        await parent.dispose()


async def test_restart_on_crash_fails_the_running_prompt_and_runs_the_queued_ones(model_path: Path) -> None:
    parent = LlamaParent(greedy_load(model_path, n_ctx=1024), restart_on_crash=True)
    await parent.init()
    try:
        running = await parent.send_prompt("Write a long story.", max_tokens=400)
        queued = [await parent.send_prompt(f"Say {word}.", max_tokens=4) for word in ("yes", "no")]
        old_pid = parent.worker_pid
        await kill_after_first_token(parent)
        failed = await parent.wait_for_completion(running)
        later = [await asyncio.wait_for(parent.wait_for_completion(q), 30) for q in queued]
        assert not failed.success
        assert all(e.success for e in later)
        assert parent.worker_pid not in (None, old_pid)
    finally:
        await parent.dispose()
