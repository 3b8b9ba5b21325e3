"""Soak: 10,000 short prompts through one parent; resident memory must stay flat.

Eight scopes take turns (each cleared every 20 turns, as a chat app starts new
conversations), four decode at once. Memory is read after a warm-up of 1100
prompts (so that caches, pools and the 1024 kept completion events exist) and
after each fifth of the run, at quiet points (every scope disposed), so that a
leak (a steady climb) can be told from the allocator's wandering.
"""

from __future__ import annotations

import asyncio
import os
import time

from .. import LlamaParent
from .common import Report, load, verdict

PROMPTS = 10_000
WARM_UP = 1100  # past keep_completed (1024), so the kept events are at their cap at the start
SCOPES = 8
SEGMENTS = 5  # memory is read after each: a leak climbs, allocator noise wanders
TURNS_PER_CONVERSATION = 20


def rss_mib(pid: int) -> float:
    try:
        import psutil
    except ImportError as exc:
        raise RuntimeError("the soak benchmark needs psutil: pip install psutil") from exc
    return float(psutil.Process(pid).memory_info().rss) / 2**20


async def _turns(parent: LlamaParent, scope_index: int, count: int) -> None:
    scope = parent.get_scope()
    for turn in range(count):
        if turn and turn % TURNS_PER_CONVERSATION == 0:
            await scope.clear()
        event = await parent.wait_for_completion(
            await scope.send_prompt(f"Say the number {scope_index * count + turn}.", max_tokens=2)
        )
        assert event.success, event.error
    await scope.dispose()


async def _run(parent: LlamaParent, total: int) -> None:
    await asyncio.gather(*(_turns(parent, i, total // SCOPES) for i in range(SCOPES)))


async def run(report: Report) -> None:
    readings: list[tuple[float, float]] = []  # (parent, worker) MiB, at quiet points between segments
    async with LlamaParent(load(n_parallel=4, n_ctx=1024)) as parent:
        worker = parent.worker_pid
        assert worker is not None
        await _run(parent, WARM_UP)
        readings.append((rss_mib(os.getpid()), rss_mib(worker)))
        started = time.perf_counter()
        for _ in range(SEGMENTS):
            await _run(parent, PROMPTS // SEGMENTS)
            readings.append((rss_mib(os.getpid()), rss_mib(worker)))
        elapsed = time.perf_counter() - started
    for side, name in enumerate(("parent", "worker")):
        series = [reading[side] for reading in readings]
        growth = (series[-1] - series[0]) / series[0]
        report.add(
            f"soak: {name} resident memory over {PROMPTS} prompts ({elapsed:.0f} s)",
            f"{series[0]:.1f} -> {series[-1]:.1f} MiB (every {PROMPTS // SEGMENTS}: "
            + ", ".join(f"{v:.0f}" for v in series[1:])
            + ")",
            "target growth < 5 %",
            verdict(growth < 0.05, f"{growth * 100:+.1f} %"),
        )
