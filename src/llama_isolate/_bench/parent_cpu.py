"""The parent's CPU per streamed token, beside the floor of any asyncio program receiving that many messages.

Ours: the CPU time of the event loop's thread while it streams one answer
(a listener attached), divided by the tokens. The floor: an asyncio loop
that does nothing but receive the same number of small messages at the
same rate from another process, beside two processes streaming memory at
the worker's niceness (as the worker's two threads do). Waking a thread that
slept, with caches the neighbours have just flushed, costs far more than the
work it then does (our per-token path takes 4 us with warm caches); the
floor shows what no parent code can go below.
"""

from __future__ import annotations

import time

from .. import LlamaParent
from .common import STORY, Report, load, verdict
from .floors import WORKER_NICENESS, busy, receive

MAX_TOKENS = 256
TARGET_US = 80.0


async def ours() -> tuple[float, float]:
    """(CPU seconds per token, tokens per second) of one streamed answer."""
    async with LlamaParent(load(plain=True)) as parent:
        await parent.wait_for_completion(await parent.send_prompt("Hi", max_tokens=4))  # warm up
        parent.stream.listen(lambda _: None)
        started, wall = time.thread_time(), time.perf_counter()
        event = await parent.wait_for_completion(await parent.send_prompt(STORY, max_tokens=MAX_TOKENS))
        cpu, elapsed = time.thread_time() - started, time.perf_counter() - wall
    return cpu / event.completion_tokens, event.completion_tokens / elapsed


async def run(report: Report) -> None:
    per_token, rate = await ours()
    with busy(2, WORKER_NICENESS, memory=True):
        floor = await receive(rate, MAX_TOKENS) / MAX_TOKENS
    report.add(
        "parent CPU per streamed token",
        f"{per_token * 1e6:.0f} us",
        f"floor (empty receiver, {rate:.0f} msg/s, 2 memory-bound at nice +{WORKER_NICENESS}) {floor * 1e6:.0f} us",
        verdict(
            per_token * 1e6 <= TARGET_US,
            f"{per_token / floor:.2f}x floor, {1e6 * (per_token - floor):.0f} us above (target <= {TARGET_US:.0f} us)",
        ),
    )
