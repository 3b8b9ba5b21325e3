"""Speed beside one ordinary busy process (`sh -c 'while :; do :; done'`), against idle.

One parent with the default settings (adaptive threads) and one with a fixed
thread count answer the same prompt in alternating rounds, first with
nothing else running, then with the busy process beside them; it starts
while the parents are already loaded, as it would in real life. An answer
that takes longer than `CAP_S` is stopped and counted at the rate it reached.
A third figure: the longest wait between two tokens when the busy process
starts in the middle of an answer (the engine must notice and use fewer
threads).

The busy process takes one of the two CPUs, so the best any thread count can
do beside it is one thread's speed with nothing else running: the ceiling,
measured in the same rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time

from .. import LlamaParent
from .common import Report, load, verdict
from .floors import busy

MAX_TOKENS = 64
ROUNDS = 5
CAP_S = 20.0
PROMPT = "Write a story about the sea."


async def rate(parent: LlamaParent) -> float:
    """Tokens per second of one answer (prompt included), stopped after `CAP_S`."""
    scope = parent.get_scope()
    started = time.perf_counter()
    prompt_id = await scope.send_prompt(PROMPT, max_tokens=MAX_TOKENS)
    done, _ = await asyncio.wait({asyncio.ensure_future(parent.wait_for_completion(prompt_id))}, timeout=CAP_S)
    if not done:
        await scope.stop()
    event = await parent.wait_for_completion(prompt_id)
    await scope.dispose()
    return event.completion_tokens / (time.perf_counter() - started)


async def onset_gap(parent: LlamaParent) -> float:
    """The longest gap between tokens after a busy process starts, 20 tokens into an answer."""
    stamps: list[float] = []
    twenty = asyncio.Event()

    def on_token(_: str) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) == 20:
            twenty.set()

    scope = parent.get_scope()
    scope.stream.listen(on_token)
    prompt_id = await scope.send_prompt(PROMPT, max_tokens=MAX_TOKENS)
    await twenty.wait()
    with busy(1):
        started = time.perf_counter()
        await parent.wait_for_completion(prompt_id)
    await scope.dispose()
    after = [b - a for a, b in itertools.pairwise(stamps) if b > started]
    return max(after, default=0.0)


async def run(report: Report) -> None:
    figures: dict[tuple[str, bool], list[float]] = {}
    async with (
        LlamaParent(load(n_ctx=1024)) as adaptive,
        LlamaParent(load(n_ctx=1024, adapt=False)) as fixed,
        LlamaParent(load(n_ctx=1024, adapt=False, threads=1)) as single,
    ):
        parents = {"adaptive": adaptive, "fixed": fixed, "one thread": single}
        for parent in parents.values():
            await rate(parent)  # warm up
        for is_busy in (False, True):
            with busy(1) if is_busy else contextlib.nullcontext():
                for _ in range(ROUNDS):
                    for name, parent in parents.items():
                        if not (is_busy and name == "one thread"):
                            figures.setdefault((name, is_busy), []).append(await rate(parent))
        gap = await onset_gap(adaptive)
    median = {key: statistics.median(values) for key, values in figures.items()}
    idle, loaded, ceiling = median["adaptive", False], median["adaptive", True], median["one thread", False]
    report.add(
        "beside one busy process, default settings",
        f"{loaded:.1f} tok/s",
        f"idle {idle:.1f} tok/s; fixed 2 threads beside it {median['fixed', True]:.1f} tok/s; "
        f"ceiling (1 thread, idle) {ceiling:.1f} tok/s = {ceiling / idle:.2f}x idle",
        verdict(loaded >= 0.6 * idle, f"{loaded / idle:.2f}x idle (target >= 0.6x)"),
    )
    report.add(
        "a busy process starting mid-answer: longest wait for a token",
        f"{gap * 1000:.0f} ms",
        f"a token every {1000 / loaded:.0f} ms beside it",
        verdict(gap <= 0.25, "target <= 250 ms"),
    )
    fixed_idle = median["fixed", False]
    report.add(
        "no other process: adaptive threads",
        f"{idle:.1f} tok/s",
        f"fixed 2 threads {fixed_idle:.1f} tok/s",
        verdict(idle >= 0.95 * fixed_idle, f"{idle / fixed_idle:.2f}x (target: unchanged, >= 0.95x)"),
    )
