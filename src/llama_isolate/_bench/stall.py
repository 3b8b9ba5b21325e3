"""Event-loop stalls during init and generation: llama_isolate vs inline vs to_thread.

Two floors, each the same 1 ms timer with no model:

- the noise floor: two busy-looping processes beside it (what this 2-core
  machine does to a timer when both cores are taken), for the worst stall;
- the I/O floor: the loop also receives 180 small messages a second, at
  random moments, from another process, beside two memory-bound processes at
  the worker's niceness (what any asyncio program streaming tokens at that
  rate gets; see `floors`), for the p99.
"""

from __future__ import annotations

import asyncio

from .. import LlamaParent
from .common import N_THREADS, STORY, Report, Stalls, load, model_path, ms, ticking, verdict
from .floors import WORKER_NICENESS, busy, receive

MAX_TOKENS = 256
FLOOR_RATE = 180  # messages a second


async def noise_floor(seconds: float = 3.0) -> Stalls:
    with busy(2), ticking() as stalls:
        await asyncio.sleep(seconds)
    return stalls


async def io_floor(seconds: float = 3.0) -> Stalls:
    """The timer while the loop receives 180 small messages a second from another process (no model).

    asyncio rounds epoll's timeout up to whole milliseconds, so a message that
    wakes the loop just before a tick makes that tick up to 1 ms late; the two
    busy processes at the worker's niceness take the CPUs the worker would.
    """
    with busy(2, WORKER_NICENESS, memory=True), ticking() as stalls:
        await receive(FLOOR_RATE, int(seconds * FLOOR_RATE))
    return stalls


async def ours() -> tuple[Stalls, Stalls]:
    """The timer during init and generation, and during generation alone (a listener receives the tokens)."""
    with ticking() as everything:
        async with LlamaParent(load(plain=True)) as parent:
            parent.stream.listen(lambda _: None)
            with ticking() as generating:
                pid = await parent.send_prompt(STORY, max_tokens=MAX_TOKENS)
                await parent.wait_for_completion(pid)
    return everything, generating


def _raw_model() -> object:
    from llama_cpp import Llama

    return Llama(model_path=model_path(), n_ctx=2048, n_threads=N_THREADS, n_threads_batch=N_THREADS, verbose=False)


def _raw_generate(llm: object) -> None:
    for _ in llm.create_completion(STORY, max_tokens=MAX_TOKENS, temperature=0.0, stream=True):  # type: ignore[attr-defined]
        pass


async def inline() -> Stalls:
    with ticking() as stalls:
        await asyncio.sleep(0.01)
        llm = _raw_model()  # blocks the loop, as calling llama-cpp-python from a coroutine does
        await asyncio.sleep(0.01)
        _raw_generate(llm)
        await asyncio.sleep(0.01)
    return stalls


async def in_thread() -> Stalls:
    with ticking() as stalls:
        llm = await asyncio.to_thread(_raw_model)
        await asyncio.to_thread(_raw_generate, llm)
    return stalls


async def run(report: Report) -> None:
    floor = await noise_floor()
    io = await io_floor()
    mine, streaming = await ours()
    blocking = await inline()
    threaded = await in_thread()
    report.add(
        "event-loop stall, worst",
        ms(mine.worst),
        f"noise floor {ms(floor.worst)}; inline {ms(blocking.worst)}; to_thread {ms(threaded.worst)}",
        verdict(mine.worst <= 2 * floor.worst, f"{mine.worst / floor.worst:.2f}x floor (target <= 2x)"),
    )
    report.add(
        "event-loop stall while streaming, p99",
        ms(streaming.p99),
        f"I/O floor ({FLOOR_RATE} msg/s, 2 memory-bound at nice +{WORKER_NICENESS}) {ms(io.p99)}; "
        f"inline {ms(blocking.p99)}; to_thread {ms(threaded.p99)}",
        verdict(streaming.p99 <= 1.5 * io.p99, f"{streaming.p99 / io.p99:.2f}x floor (target <= 1.5x)"),
    )
