"""WorkerLink's watch over a worker, with a fake process: silence while busy, and a stall, mean it is dead."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from llama_isolate import LlamaLoad
from llama_isolate._client.worker_link import STALL_FACTOR, WorkerLink

from ..helpers.fake_worker import INFO, FakeProcesses

TIMEOUT = 0.05  # liveness_timeout: the link checks every TIMEOUT / 4
WAIT_S = 10.0  # a bound on waiting for what must happen within a fraction of a second


class Link:
    """A started WorkerLink on a fake process, and what it reported."""

    def __init__(self, has_work: Callable[[], bool] = lambda: True) -> None:
        self.processes = FakeProcesses()
        self.exits: list[str] = []
        self.exited = asyncio.Event()
        self.link = WorkerLink(
            LlamaLoad(path="fake.gguf"),
            on_started=lambda _: None,
            on_tokens=lambda _: None,
            on_finished=lambda _: None,
            on_fault=lambda *_: None,
            on_exit=self._on_exit,
            has_work=has_work,
            liveness_timeout=TIMEOUT,
            process_factory=self.processes,
        )

    def _on_exit(self, description: str) -> None:
        self.exits.append(description)
        self.exited.set()

    async def death(self) -> float:
        """Wait for the link to report the worker dead; returns when, on the monotonic clock."""
        await asyncio.wait_for(self.exited.wait(), WAIT_S)
        return time.monotonic()


async def test_the_link_starts_the_process_through_the_factory_and_reads_the_model() -> None:
    link = Link()
    assert await link.link.start(timeout=WAIT_S) == INFO
    assert link.link.pid == link.processes.process.pid
    await link.link.close(grace=1.0)
    assert link.link.pid is None and link.exits == []  # a close is not a death


async def test_a_busy_worker_that_stops_answering_pings_is_declared_dead_after_the_timeout() -> None:
    link = Link()
    await link.link.start(timeout=WAIT_S)
    process = link.processes.process
    await asyncio.wait_for(process.pinged(3), WAIT_S)  # answered: alive
    assert link.exits == []
    process.answering = False
    silent_since = time.monotonic()
    died = await link.death()
    assert died - silent_since >= TIMEOUT  # not before a ping went unanswered for the whole timeout
    assert process.killed_because is not None
    assert f"did not answer a liveness ping within {TIMEOUT:g} s while it had work" in process.killed_because
    assert link.exits == [f"the worker was killed because {process.killed_because}"]  # reported once
    assert link.link.pid is None


async def test_a_silent_worker_without_work_is_not_pinged_nor_killed() -> None:
    checks = 0
    enough = asyncio.Event()

    def idle() -> bool:
        nonlocal checks
        checks += 1
        if checks == 40:  # 40 checks, every TIMEOUT / 4: ten timeouts
            enough.set()
        return False

    link = Link(has_work=idle)
    await link.link.start(timeout=WAIT_S)
    process = link.processes.process
    process.answering = False
    await asyncio.wait_for(enough.wait(), WAIT_S)
    assert process.pings == 0 and process.alive and link.exits == []
    await link.link.close(grace=1.0)


async def test_a_busy_worker_that_answers_pings_but_makes_no_progress_is_declared_stuck() -> None:
    link = Link()
    started = time.monotonic()
    await link.link.start(timeout=WAIT_S)
    process = link.processes.process  # answers every ping, its progress stays 0
    died = await link.death()
    assert died - started >= STALL_FACTOR * TIMEOUT
    assert process.killed_because is not None and "made no progress" in process.killed_because
    assert len(link.exits) == 1


async def test_a_busy_worker_whose_progress_advances_stays_alive() -> None:
    link = Link()
    await link.link.start(timeout=WAIT_S)
    process = link.processes.process
    process.advancing = True
    # One ping per check at most, every TIMEOUT / 4: 60 pings span more than twice the stall limit.
    assert 59 * TIMEOUT / 4 > 2 * STALL_FACTOR * TIMEOUT
    await asyncio.wait_for(process.pinged(60), WAIT_S)
    assert process.alive and link.exits == []
    process.advancing = False  # the same pongs, without progress: now the rule bites
    await link.death()
    assert process.killed_because is not None and "made no progress" in process.killed_because
