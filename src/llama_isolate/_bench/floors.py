"""What this machine does to any asyncio program, with no model: the floors our figures stand beside.

- `busy(n, nice)`: n processes spinning on a CPU, at a niceness (0 for "one
  ordinary busy process"); `memory=True` makes them stream a 32 MB array
  through the caches, as the worker's matrix products do, so that whatever
  runs between them starts with cold caches, as our parent does.
- `receive(rate, count)`: an asyncio loop whose only work is receiving `count`
  small messages at `rate` per second (on average) from another process, as
  the parent receives tokens from the worker; returns the loop thread's CPU
  seconds.

The messages come at random moments (exponential gaps). Tokens come when a
decode ends, whenever that is; a sender that sleeps a fixed interval instead
falls into step with the receiver's 1 ms timer on this machine (measured: all
arrivals within the same sixth of a tick), and hides what uncorrelated
arrivals cost that timer: CPython rounds epoll's timeout up to a whole
millisecond, so a tick is late by however far into it the message came
(p99 0.33 ms in step, 1.01 ms at random).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

SPIN = ["sh", "-c", "while :; do :; done"]
STREAM = [sys.executable, "-c", "import numpy as np\na = np.ones(4_000_000)\nwhile True: a.sum()"]
WORKER_NICENESS = 5  # the worker's (llama_isolate._worker.main)
MESSAGE = 48  # bytes: about a Tokens frame

_SENDER = """
import random, socket, sys, time
sock = socket.socket(fileno=int(sys.argv[1]))
count, rate = int(sys.argv[2]), float(sys.argv[3])
for _ in range(count):
    time.sleep(random.expovariate(rate))
    sock.send(b"x" * int(sys.argv[4]))
"""


@contextlib.contextmanager
def busy(n: int, nice: int = 0, *, memory: bool = False) -> Iterator[None]:
    """`n` processes that each keep a CPU busy, at niceness `nice`, for the block's duration."""
    command = STREAM if memory else SPIN
    spinners = [subprocess.Popen(command, preexec_fn=lambda: os.nice(nice)) for _ in range(n)]  # noqa: PLW1509
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


class _Counter(asyncio.Protocol):
    def __init__(self, count: int, done: asyncio.Future[None]) -> None:
        self._left = count * MESSAGE
        self._done = done

    def data_received(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left <= 0 and not self._done.done():
            self._done.set_result(None)


async def receive(rate: float, count: int) -> float:
    """Receive `count` messages at `rate` per second from another process; the loop thread's CPU seconds."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, _ = await loop.create_unix_connection(lambda: _Counter(count, done), sock=ours)
    started = time.thread_time()
    sender = subprocess.Popen(
        [sys.executable, "-c", _SENDER, str(theirs.fileno()), str(count), str(rate), str(MESSAGE)],
        pass_fds=(theirs.fileno(),),
    )
    theirs.close()
    try:
        await done
        return time.thread_time() - started
    finally:
        transport.close()
        sender.wait()
