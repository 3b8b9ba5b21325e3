"""How many threads `llama_decode` uses: as many CPUs as the rest of the machine leaves free.

ggml's threads meet at a barrier after every operation of the graph (about
500 per token for a 135M model). When another process takes one of their
CPUs, the thread that was preempted holds up all the others at every barrier:
on 2 cores beside one busy process, 2 threads decoded at a third of their
idle speed, and at the worker's lower priority they nearly stopped (0.2
tokens/s). One thread keeps about 0.65x of the idle speed.

So a watch thread estimates, every 50 ms while the engine works, how much CPU
the *other* processes used over the last tenth of a second: the machine's busy
time (from /proc/stat) minus this process's own CPU time. Decodes use as
many threads as there are CPUs left, between 1 and the configured
`n_threads`; `llama_set_n_threads` changes the count between two decodes at
no cost. With nothing else running the count stays at `n_threads`.

When a busy process appears while a decode runs, that decode would crawl
until it ends (over a second was measured); the watch thread aborts it
through the abort flag instead, and the engine redoes the step with fewer
threads, as it redoes a step aborted by a stop.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import llama_cpp as C

from .abort import AbortFlag

logger = logging.getLogger("llama_isolate.worker")

WINDOW_S = 0.1  # the estimate covers this much of the recent past
SAMPLE_S = 0.05  # how often the watch thread samples while the engine works
CUT_AFTER_S = 0.05  # a decode running this long when others appear is aborted and redone
DECODE_ABORTED = 2  # what llama_decode returns when the abort flag stopped it
# Another process using less than this share of a CPU does not cost us a thread.
_SPARE_MARGIN = 0.4


@dataclass(frozen=True)
class Reading:
    """One sample: wall time, this process's CPU time, and the machine's busy time, in seconds."""

    wall: float
    ours: float
    busy: float | None

    @classmethod
    def now(cls) -> Reading:
        return cls(time.monotonic(), time.process_time(), _machine_busy())


def _machine_busy() -> float | None:
    """Seconds every CPU of the machine has spent not idle, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 8 or fields[0] != b"cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    steal = int(fields[8]) if len(fields) > 8 else 0
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def others_cpu(before: Reading, after: Reading) -> float:
    """CPUs the other processes of the machine kept busy, on average, between two readings (0 without /proc/stat)."""
    elapsed = after.wall - before.wall
    if elapsed <= 0 or after.busy is None or before.busy is None:
        return 0.0
    return max(0.0, (after.busy - before.busy) - (after.ours - before.ours)) / elapsed


def threads_for(others: float, cpus: int, ceiling: int) -> int:
    """Threads to use when other processes keep `others` CPUs busy out of `cpus`."""
    free = cpus - others
    return max(1, min(ceiling, math.floor(free + _SPARE_MARGIN)))


class ThreadTuner:
    """Sets the context's thread counts from what the rest of the machine uses.

    The engine calls `before_decode()` and `after_decode()` around every
    decode, `rest()` when it has nothing to do, and `close()` at the end.

    Example::

        tuner = ThreadTuner(ctx, n_threads=2, n_threads_batch=2, adaptive=True, abort=flag)
        tuner.before_decode()
        llama_decode(ctx, batch)
        tuner.after_decode(aborted=False)
    """

    def __init__(self, ctx: int, *, n_threads: int, n_threads_batch: int, adaptive: bool, abort: AbortFlag) -> None:
        self._ctx = ctx
        self._ceiling = n_threads
        self._ceiling_batch = n_threads_batch
        self._cpus = os.cpu_count() or 1
        self._abort = abort
        self.current = n_threads
        self._wanted = (n_threads, n_threads_batch)
        self._decode_started: float | None = None
        self.cut = False
        self._working = threading.Event()
        self._closed = False
        self._readings: collections.deque[Reading] = collections.deque([Reading.now()])
        if adaptive and ctx and self._readings[0].busy is not None:
            threading.Thread(target=self._watch, name="threads", daemon=True).start()

    def before_decode(self) -> None:
        """Apply the count the watch thread wants, and start timing the decode."""
        self._working.set()
        if self.cut:  # a cut that came after its decode had ended: it must not abort this one
            self.cut = False
            self._abort.clear()
        wanted, wanted_batch = self._wanted
        if wanted != self.current:
            logger.debug("decoding with %d threads", wanted)
            self.current = wanted
            C.llama_set_n_threads(self._ctx, wanted, wanted_batch)
        self._decode_started = time.monotonic()

    def after_decode(self, aborted: bool) -> None:
        """The decode ended; if it was aborted because it was cut short, lower the flag again.

        A stop that came at the same moment is not lost: its command is
        applied before the next step, flag or no flag.
        """
        self._decode_started = None
        if aborted and self.cut:
            self.cut = False
            self._abort.clear()

    def run(self, decode: Callable[[], int]) -> int:
        """`decode()` (a llama_decode's return code) between `before_decode` and `after_decode`, redone with
        fewer threads while it is this tuner that cut it short; for a decode that cannot wait for the next step."""
        while True:
            self.before_decode()
            rc = decode()
            cut = rc == DECODE_ABORTED and self.cut
            self.after_decode(rc == DECODE_ABORTED)
            if not cut:
                return rc

    def rest(self) -> None:
        """The engine has nothing to do: the watch thread sleeps until the next decode."""
        self._working.clear()

    def close(self) -> None:
        self._closed = True
        self._working.set()

    def _watch(self) -> None:
        while True:
            if not self._working.is_set():
                self._working.wait()
                # What others did while the engine rested is stale (another
                # worker's answer, say): start a fresh window.
                self._readings = collections.deque([Reading.now()])
            if self._closed:
                return
            time.sleep(SAMPLE_S)
            self._sample()

    def _sample(self) -> None:
        now = Reading.now()
        readings = self._readings
        readings.append(now)
        while len(readings) > 2 and now.wall - readings[1].wall >= WINDOW_S:
            readings.popleft()
        oldest = readings[0]
        if now.wall - oldest.wall < SAMPLE_S or now.busy is None or oldest.busy is None:
            return
        others = others_cpu(oldest, now)
        wanted = threads_for(others, self._cpus, self._ceiling)
        self._wanted = (wanted, threads_for(others, self._cpus, self._ceiling_batch))
        started = self._decode_started
        if wanted < self.current and started is not None and now.wall - started >= CUT_AFTER_S:
            logger.debug(
                "other processes use %.2f CPUs: cutting a decode short to redo it with %d threads", others, wanted
            )
            self.cut = True
            self._abort.set()
