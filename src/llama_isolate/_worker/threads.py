"""How many threads `llama_decode` uses: as many CPUs as the rest of the machine leaves free.

ggml's threads meet at a barrier after every operation of the graph (about
500 per token for a 135M model). When another process takes one of their
CPUs, the thread that was preempted holds up all the others at every barrier:
on 2 cores with one busy process beside it, 2 threads decode at a third of
their idle speed, and at a lower priority they nearly stop (0.2 tokens/s
measured). One thread keeps 0.7x of the idle speed.

So the engine estimates, every quarter of a second of work, how much CPU the
*other* processes use: the machine's busy time (from /proc/stat) minus this
process's own CPU time. It decodes with as many threads as there are CPUs
left, between 1 and the configured `n_threads`; `llama_set_n_threads`
changes the count between two decodes at no cost. With nothing else running
the count stays at `n_threads`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import llama_cpp as C

logger = logging.getLogger("llama_isolate.worker")

WINDOW_S = 0.25
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


def threads_for(others: float, cpus: int, ceiling: int) -> int:
    """Threads to use when other processes keep `others` CPUs busy out of `cpus`."""
    free = cpus - others
    return max(1, min(ceiling, math.floor(free + _SPARE_MARGIN)))


class ThreadTuner:
    """Sets the context's thread counts from what the rest of the machine uses.

    Example::

        tuner = ThreadTuner(ctx, n_threads=2, n_threads_batch=2, adaptive=True)
        tuner.before_decode()  # before every llama_decode
    """

    def __init__(self, ctx: int, *, n_threads: int, n_threads_batch: int, adaptive: bool) -> None:
        self._ctx = ctx
        self._ceiling = n_threads
        self._ceiling_batch = n_threads_batch
        self._cpus = os.cpu_count() or 1
        self._adaptive = adaptive and ctx != 0
        self.current = n_threads
        self._last = Reading.now()

    def before_decode(self) -> None:
        """Re-estimate at most once per window; change the thread count if the machine changed."""
        if not self._adaptive:
            return
        now = Reading.now()
        elapsed = now.wall - self._last.wall
        if elapsed < WINDOW_S:
            return
        if now.busy is None or self._last.busy is None:
            self._adaptive = False  # no /proc/stat: keep the configured counts
            return
        others = max(0.0, (now.busy - self._last.busy) - (now.ours - self._last.ours)) / elapsed
        self._last = now
        wanted = threads_for(others, self._cpus, self._ceiling)
        if wanted != self.current:
            logger.debug("other processes use %.2f CPUs: decoding with %d threads", others, wanted)
            self.current = wanted
            C.llama_set_n_threads(self._ctx, wanted, threads_for(others, self._cpus, self._ceiling_batch))
