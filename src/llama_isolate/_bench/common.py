"""Helpers shared by the benchmarks: the model, timers, and the report table."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .. import ContextParams, LlamaLoad, SamplerParams, default_model_path

N_THREADS = 2
# A template that passes the last user message through untouched, so that our
# prompts and raw llama-cpp-python's are the same tokens.
PLAIN_TEMPLATE = "{{ messages[-1]['content'] }}"
STORY = "Once upon a time, in a small village by the sea, there lived"


def machine() -> str:
    """The CPU's name, its cores, the memory and Python's version: what a figure was measured on."""
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, Python {platform.python_version()}"


def model_path() -> str:
    return str(default_model_path())


def load(
    *, n_parallel: int = 1, n_ctx: int = 2048, plain: bool = False, adapt: bool = True, threads: int = N_THREADS
) -> LlamaLoad:
    return LlamaLoad(
        path=model_path(),
        context_params=ContextParams(
            n_ctx=n_ctx,
            n_parallel=n_parallel,
            n_threads=threads,
            n_threads_batch=threads,
            adapt_threads=adapt,
        ),
        sampler_params=SamplerParams(greedy=True),
        chat_template=PLAIN_TEMPLATE if plain else None,
    )


@dataclass
class Stalls:
    """Lateness of a 1 ms asyncio timer, in seconds, one value per tick."""

    late: list[float] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(self.late, default=0.0)

    @property
    def p99(self) -> float:
        if len(self.late) < 2:
            return self.worst
        return statistics.quantiles(self.late, n=100)[98]


@contextmanager
def ticking() -> Iterator[Stalls]:
    """Run a 1 ms timer on the current loop while the block runs."""
    stalls = Stalls()

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stalls.late.append(max(0.0, now - last - 0.001))
            last = now

    task = asyncio.get_running_loop().create_task(tick())
    try:
        yield stalls
    finally:
        task.cancel()


class Report:
    """Collects rows and prints them as a table."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, figure: str, ours: str, reference: str, verdict: str) -> None:
        self.rows.append((figure, ours, reference, verdict))
        print(f"  {figure}: {ours}  |  {reference}  |  {verdict}", flush=True)

    def beside_native(
        self, figure: str, ours: list[float], theirs: list[float], *, shown: str, tool: str, extra: str = ""
    ) -> None:
        """A row of paired rounds against native llama.cpp's `tool` (`theirs` is empty when no native binary was
        given): its median, the median of the per-round ratios, each round's ratio, and the target of 1.0x."""
        also = f"; {extra}" if extra else ""
        if not theirs:
            self.add(figure, shown, f"no native reference given{also}", "")
            return
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        ratio = statistics.median(ratios)
        self.add(
            f"{figure}, vs {tool} (median of {len(ratios)} paired rounds)",
            shown,
            f"{tool} {statistics.median(theirs):.1f} tok/s (flash attention auto){also}",
            verdict(ratio >= 1.0, f"{ratio:.2f}x (rounds {' '.join(f'{r:.2f}' for r in ratios)}; target >= 1.0x)"),
        )

    def markdown(self) -> str:
        lines = ["| figure | llama_isolate | reference | ratio / target |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def verdict(ok: bool, text: str) -> str:
    return f"{text} {'ok' if ok else 'MISSED'}"
