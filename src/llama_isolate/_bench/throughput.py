"""Aggregate throughput of N concurrent scopes vs the same prompts one by one."""

from __future__ import annotations

import time

from .. import LlamaParent
from .common import Report, load, verdict

PROMPTS = [
    "Write a short story about a fox.",
    "Explain how rain forms.",
    "Describe a busy market.",
    "Tell me about the history of bread.",
    "Write a poem about the mountains.",
    "Explain why the sea is salty.",
    "Describe your ideal garden.",
    "Tell me a story about a lighthouse keeper.",
]
MAX_TOKENS = 128


async def aggregate(n_parallel: int, prompts: list[str], rounds: int = 2) -> float:
    """Generated tokens per second of wall time, from the first send to the last event.

    The best of `rounds` runs (this machine is shared and noisy; the first run
    also pays for llama.cpp's first graph allocations).
    """
    best = 0.0
    async with LlamaParent(load(n_parallel=n_parallel, n_ctx=1024)) as parent:
        for _ in range(rounds):
            scopes = [parent.get_scope() for _ in prompts]
            started = time.perf_counter()
            ids = [await s.send_prompt(p, max_tokens=MAX_TOKENS) for s, p in zip(scopes, prompts, strict=True)]
            events = [await parent.wait_for_completion(i) for i in ids]
            elapsed = time.perf_counter() - started
            best = max(best, sum(e.completion_tokens for e in events) / elapsed)
            for scope in scopes:
                await scope.dispose()
    return best


async def run(report: Report) -> None:
    for n in (1, 2, 4, 8):
        prompts = PROMPTS[:n]
        together = await aggregate(n, prompts)
        one_by_one = await aggregate(1, prompts)
        ratio = together / one_by_one
        target = " (target >= 1.5x)" if n == 8 else ""
        report.add(
            f"{n} scopes at once (n_parallel={n})",
            f"{together:.1f} tok/s",
            f"one by one {one_by_one:.1f} tok/s",
            verdict(ratio >= 1.5 or n < 8, f"{ratio:.2f}x{target}"),
        )
