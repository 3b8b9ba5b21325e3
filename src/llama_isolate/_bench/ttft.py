"""Time to first token of a scope with ~1800 tokens of history, after another scope ran, vs a fresh scope."""

from __future__ import annotations

import statistics

from .. import LlamaParent
from .common import Report, load, ms, verdict

HISTORY = "Here are my notes. " + " ".join(f"Note {i}: the blue jar is in cupboard {i}." for i in range(140))
ROUNDS = 3


async def _first_token(parent: LlamaParent, scope_prompt: tuple[object, str]) -> tuple[float, int]:
    scope, prompt = scope_prompt
    event = await parent.wait_for_completion(await scope.send_prompt(prompt, max_tokens=8))  # type: ignore[attr-defined]
    assert event.timings.first_token_s is not None, event
    return event.timings.first_token_s, event.prompt_tokens + event.cached_tokens


async def run(report: Report) -> None:
    long_ttft, fresh_ttft, sizes = [], [], []
    async with LlamaParent(load(n_ctx=4096)) as parent:
        for _ in range(ROUNDS):
            veteran = parent.get_scope()
            await parent.wait_for_completion(await veteran.send_prompt(HISTORY, max_tokens=16))
            other = parent.get_scope()  # takes the only slot: the veteran's cache is parked
            await parent.wait_for_completion(await other.send_prompt("Tell me a joke.", max_tokens=16))
            ttft, size = await _first_token(parent, (veteran, "Where is the blue jar of note 7?"))
            long_ttft.append(ttft)
            sizes.append(size)
            fresh_ttft.append((await _first_token(parent, (parent.get_scope(), "Where is the blue jar?")))[0])
            for scope in (veteran, other):
                await scope.dispose()
    ratio = statistics.median(long_ttft) / statistics.median(fresh_ttft)
    report.add(
        f"first token, {min(sizes)}-token history after another scope ran",
        ms(statistics.median(long_ttft)),
        f"fresh scope {ms(statistics.median(fresh_ttft))}",
        verdict(ratio <= 3, f"{ratio:.2f}x (target <= 3x)"),
    )
