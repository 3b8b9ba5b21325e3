"""A worker that dies: every pending prompt gets an event, nobody waits forever; the restart policy."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from llama_isolate import ContextParams, LlamaLoad, LlamaParent, LlamaStatus, LlamaStatusError, RestartPolicy
from llama_isolate._client.restarts import CrashRestarts
from llama_isolate.testing import make_tiny_model

from ..helpers.logs import flag_on_log
from ..helpers.models import children, first_token, greedy_load


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


# ---------------------------------------------------------------------- the restart policy


async def kill_with_prompts(parent: LlamaParent) -> tuple[str, list[str]]:
    """Stop the worker, send one prompt it takes (running) and two that wait (queued), then kill it."""
    pid = parent.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # nothing can finish now: what runs and what waits is fixed
    running = await parent.send_prompt("Write a long story.", max_tokens=400)
    queued = [await parent.send_prompt(f"Say {word}.", max_tokens=4) for word in ("yes", "no")]
    assert parent.queue_length == 2
    os.kill(pid, signal.SIGKILL)
    return running, queued


def tiny_load(path: Path) -> LlamaLoad:
    return LlamaLoad(path=path, context_params=ContextParams(n_ctx=256, n_threads=1, n_threads_batch=1))


async def test_a_policy_restarts_each_crash_and_runs_what_was_queued_and_sent_meanwhile(
    model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "llama_isolate")
    policy = RestartPolicy(max_attempts=3, backoff_s=0.2, max_backoff_s=0.4)
    parent = LlamaParent(greedy_load(model_path, n_ctx=512), restart_on_crash=policy, liveness_timeout=None)
    await parent.init()
    try:
        for crash in (1, 2):  # the second crash comes soon after the first restart: attempt 2, after a backoff
            old_pid = parent.worker_pid
            running, queued = await kill_with_prompts(parent)
            failed = await parent.wait_for_completion(running)
            assert failed.error_code == "worker_died" and "SIGKILL" in (failed.error or "")
            later = await parent.send_prompt("Hello again", max_tokens=3)  # sent while it restarts
            events = [await asyncio.wait_for(parent.wait_for_completion(p), 60) for p in (*queued, later)]
            assert [e.success for e in events] == [True] * 3, [e.error for e in events]
            assert parent.worker_pid not in (None, old_pid)
            assert f"restarting the worker (attempt {crash} of 3)" in caplog.text
        assert "next restart of the worker in 0.2 s" in caplog.text  # only before the second attempt
        assert "next restart of the worker in 0.4 s" not in caplog.text
        assert parent.status is LlamaStatus.READY
    finally:
        await parent.dispose()


async def test_a_restart_that_cannot_load_gives_up_after_max_attempts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "llama_isolate")
    path = make_tiny_model(tmp_path)
    policy = RestartPolicy(max_attempts=3, backoff_s=0.01, max_backoff_s=0.02)
    parent = LlamaParent(tiny_load(path), restart_on_crash=policy, liveness_timeout=None)
    await parent.init()
    try:
        path.unlink()  # every restart now fails to load
        running, queued = await kill_with_prompts(parent)
        events = [await asyncio.wait_for(parent.wait_for_completion(p), 60) for p in (running, *queued)]
        assert all(e.error_code == "worker_died" for e in events)
        assert "SIGKILL" in (events[0].error or "")
        for event in events[1:]:
            assert event.error is not None
            assert "could not be restarted after 3 attempts (RestartPolicy.max_attempts=3)" in event.error
            assert str(path) in event.error  # the last attempt's load error
        assert parent.status is LlamaStatus.ERROR
        assert parent.error == events[1].error
        for attempt in (1, 2, 3):
            assert f"restarting the worker (attempt {attempt} of 3)" in caplog.text
            assert f"restart attempt {attempt} of 3 failed" in caplog.text
        assert "attempt 4" not in caplog.text
        with pytest.raises(LlamaStatusError, match="restart"):
            await parent.send_prompt("hi")  # it gave up: sends are refused again, as without a policy
    finally:
        await parent.dispose()
    assert not children()


async def test_dispose_during_a_backoff_wait_returns_at_once_and_leaves_no_task(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path)
    policy = RestartPolicy(max_attempts=None, backoff_s=3600.0, max_backoff_s=3600.0)
    parent = LlamaParent(tiny_load(path), restart_on_crash=policy, liveness_timeout=None)
    await parent.init()
    path.unlink()
    with flag_on_log("next restart of the worker in 3600.0 s") as waiting:
        running, queued = await kill_with_prompts(parent)
        assert (await parent.wait_for_completion(running)).error_code == "worker_died"
        await asyncio.wait_for(waiting.wait(), 60)  # the first attempt failed; the second waits an hour
    started = time.monotonic()
    await asyncio.wait_for(parent.dispose(), 10)
    assert time.monotonic() - started < 2
    assert parent.status is LlamaStatus.DISPOSED
    assert [(await parent.wait_for_completion(p)).finish_reason for p in queued] == ["cancelled", "cancelled"]
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert not children()


def test_restart_on_crash_takes_a_policy_or_a_bool() -> None:
    with pytest.raises(TypeError, match="RestartPolicy or a bool"):
        LlamaParent(LlamaLoad(path="m.gguf"), restart_on_crash=3)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_crashes_in_a_row_count_as_attempts_until_a_worker_stays_up() -> None:
    clock = FakeClock()
    restarts = CrashRestarts(RestartPolicy(max_attempts=2, backoff_s=0.0, reset_after_s=60.0), clock=clock)
    started: list[float] = []

    async def restart() -> None:
        started.append(clock.now)

    def down() -> bool:
        return True

    assert await restarts.run("crash 1", restart, down) is None
    clock.now = 10.0  # that worker died after 10 s: the next restart is the second in a row
    assert await restarts.run("crash 2", restart, down) is None
    clock.now = 20.0
    gave_up = await restarts.run("crash 3", restart, down)
    assert gave_up is not None and "after 2 attempts" in gave_up and gave_up.endswith("crash 3")
    assert started == [0.0, 10.0]
    clock.now = 30.0  # after giving up, a new crash (after a manual restart) starts counting again
    assert await restarts.run("crash 4", restart, down) is None
    clock.now = 100.0  # that worker stayed up 70 s >= reset_after_s: the count starts again
    assert await restarts.run("crash 5", restart, down) is None
    clock.now = 110.0
    assert await restarts.run("crash 6", restart, down) is None
    assert started == [0.0, 10.0, 30.0, 100.0, 110.0]


async def test_a_failed_attempt_is_retried_and_stop_ends_the_wait() -> None:
    restarts = CrashRestarts(RestartPolicy(max_attempts=None, backoff_s=3600.0, max_backoff_s=3600.0))
    tries = 0

    async def restart() -> None:
        nonlocal tries
        tries += 1
        raise OSError("no process could be spawned")

    with flag_on_log("next restart of the worker in 3600.0 s") as waiting:
        task = asyncio.create_task(restarts.run("crash", restart, lambda: True))
        await asyncio.wait_for(waiting.wait(), 10)
    restarts.stop()
    assert await asyncio.wait_for(task, 2) is None
    assert tries == 1
