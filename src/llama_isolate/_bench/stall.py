"""Event-loop stalls during init and generation: llama_isolate vs inline vs to_thread.

The noise floor is the same timer with two busy-looping processes and no model:
what this 2-core machine does to a 1 ms timer when both cores are taken.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from .. import LlamaParent
from .common import N_THREADS, STORY, Report, Stalls, load, model_path, ms, ticking, verdict

MAX_TOKENS = 256


async def noise_floor(seconds: float = 3.0) -> Stalls:
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        with ticking() as stalls:
            await asyncio.sleep(seconds)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    return stalls


_PINGER = """
import socket, sys, time
sock = socket.socket(fileno=int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    sock.send(b"x" * 64)
    time.sleep(0.01)
"""


async def io_floor(seconds: float = 3.0) -> Stalls:
    """The timer while the loop receives 100 small messages a second from another process (no model).

    asyncio rounds epoll's timeout up to whole milliseconds, so a message that
    wakes the loop just before a tick makes that tick up to 1 ms late: this is
    the floor for any asyncio program receiving tokens at this rate.
    """
    import socket

    ours_end, theirs = socket.socketpair()
    pinger = subprocess.Popen(
        [sys.executable, "-c", _PINGER, str(theirs.fileno()), str(int(seconds * 100))], pass_fds=(theirs.fileno(),)
    )
    theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours_end)
    with ticking() as stalls:
        while await reader.read(4096):
            pass
    writer.close()
    pinger.wait()
    return stalls


async def ours() -> Stalls:
    with ticking() as stalls:
        async with LlamaParent(load()) as parent:
            pid = await parent.send_prompt(STORY, max_tokens=MAX_TOKENS)
            await parent.wait_for_completion(pid)
    return stalls


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
    mine = await ours()
    blocking = await inline()
    threaded = await in_thread()
    report.add(
        "event-loop stall, worst",
        ms(mine.worst),
        f"noise floor {ms(floor.worst)}; inline {ms(blocking.worst)}; to_thread {ms(threaded.worst)}",
        verdict(mine.worst <= 2 * floor.worst, f"{mine.worst / floor.worst:.2f}x floor (target <= 2x)"),
    )
    report.add(
        "event-loop stall, p99",
        ms(mine.p99),
        f"noise floor {ms(floor.p99)}; 100 msg/s I/O floor {ms(io.p99)}; inline {ms(blocking.p99)}; "
        f"to_thread {ms(threaded.p99)}",
        verdict(mine.p99 <= 0.001, "target <= 1 ms"),
    )
