"""Stop latency: from `stop()` to the completion event, while decoding and mid prompt."""

from __future__ import annotations

import asyncio
import time

from .. import LlamaParent
from .common import Report, load, ms, verdict

ROUNDS = 5
LONG = "Summarize the following notes. " + " ".join(f"Note {i}: the red box is on shelf {i}." for i in range(140))


async def _stop_after(parent: LlamaParent, prompt: str, *, tokens: int, delay: float) -> tuple[float, int]:
    scope = parent.get_scope()
    seen = asyncio.Event()
    count = 0

    def on_token(_: str) -> None:
        nonlocal count
        count += 1
        if count >= tokens:
            seen.set()

    scope.stream.listen(on_token)
    pid = await scope.send_prompt(prompt, max_tokens=2000)
    if tokens:
        await seen.wait()
    else:
        while parent._flow.queue.running[pid].started is None:
            await asyncio.sleep(0.0005)
        await asyncio.sleep(delay)
    started = time.perf_counter()
    await parent.stop()
    event = await parent.wait_for_completion(pid)
    elapsed = time.perf_counter() - started
    assert event.finish_reason == "stopped", event
    await scope.dispose()
    return elapsed, event.prompt_tokens


async def run(report: Report) -> None:
    async with LlamaParent(load(n_ctx=4096)) as parent:
        decoding = [
            (await _stop_after(parent, "Write a long essay about the sea.", tokens=20, delay=0))[0]
            for _ in range(ROUNDS)
        ]
        # Each round's prompt differs from its start, so that none reuses the cache an earlier stop left.
        prompt = [await _stop_after(parent, f"({i}) {LONG}", tokens=0, delay=0.3 + 0.2 * i) for i in range(ROUNDS)]
    worst_decoding = max(decoding)
    worst_prompt = max(p[0] for p in prompt)
    processed = ", ".join(str(p[1]) for p in prompt)
    report.add(
        "stop while decoding (worst of 5)",
        ms(worst_decoding),
        "target 20 ms",
        verdict(worst_decoding <= 0.02, "from stop() to the event"),
    )
    report.add(
        "stop mid prompt (~1800 tokens, worst of 5)",
        ms(worst_prompt),
        f"target 20 ms; prompt tokens processed when stopped: {processed}",
        verdict(worst_prompt <= 0.02, "from stop() to the event"),
    )
