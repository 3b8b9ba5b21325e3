"""Single-stream decode speed: llama_isolate vs raw llama-cpp-python on the same prompt.

Both decode the same tokens (the same plain prompt, greedy) with the same
threads; rounds alternate between the two so that the machine's noise falls
on both alike, and the medians are compared.
"""

from __future__ import annotations

import statistics
import time

from .. import LlamaParent
from .common import N_THREADS, STORY, Report, load, model_path, verdict

MAX_TOKENS = 256
ROUNDS = 5


def raw_round(llm: object) -> float:
    llm.reset()  # type: ignore[attr-defined]
    stamps = [
        time.perf_counter()
        for _ in llm.create_completion(STORY, max_tokens=MAX_TOKENS, temperature=0.0, stream=True)  # type: ignore[attr-defined]
    ]
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


async def our_round(parent: LlamaParent) -> float:
    scope = parent.get_scope()
    event = await parent.wait_for_completion(await scope.send_prompt(STORY, max_tokens=MAX_TOKENS))
    await scope.dispose()
    assert event.timings.first_token_s is not None
    return (event.completion_tokens - 1) / (event.timings.total_s - event.timings.first_token_s)


async def run(report: Report) -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=model_path(), n_ctx=2048, n_threads=N_THREADS, n_threads_batch=N_THREADS, verbose=False)
    ours, raw = [], []
    async with LlamaParent(load(plain=True)) as parent:
        await our_round(parent)  # warm both up
        raw_round(llm)
        for _ in range(ROUNDS):
            ours.append(await our_round(parent))
            raw.append(raw_round(llm))
    del llm
    mine, theirs = statistics.median(ours), statistics.median(raw)
    report.add(
        "single-stream decode (median of 5)",
        f"{mine:.1f} tok/s",
        f"raw llama-cpp-python {theirs:.1f} tok/s",
        verdict(mine >= theirs, f"{mine / theirs:.2f}x (target >= 1.0x)"),
    )
