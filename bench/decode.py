"""Single-stream decode speed: llama_isolate vs raw llama-cpp-python on the same prompt."""

from __future__ import annotations

import statistics
import time

from llama_isolate import LlamaParent

from .common import N_THREADS, STORY, Report, load, model_path, verdict

MAX_TOKENS = 256
ROUNDS = 3


def raw_decode_rates() -> list[float]:
    from llama_cpp import Llama

    llm = Llama(model_path=model_path(), n_ctx=2048, n_threads=N_THREADS, n_threads_batch=N_THREADS, verbose=False)
    rates = []
    for _ in range(ROUNDS + 1):  # the first round warms up
        llm.reset()
        stamps = []
        for _chunk in llm.create_completion(STORY, max_tokens=MAX_TOKENS, temperature=0.0, stream=True):
            stamps.append(time.perf_counter())
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    del llm
    return rates[1:]


async def our_decode_rates() -> list[float]:
    rates = []
    async with LlamaParent(load(plain=True)) as parent:
        for _ in range(ROUNDS + 1):
            scope = parent.get_scope()
            event = await parent.wait_for_completion(await scope.send_prompt(STORY, max_tokens=MAX_TOKENS))
            assert event.timings.first_token_s is not None
            rates.append((event.completion_tokens - 1) / (event.timings.total_s - event.timings.first_token_s))
            await scope.dispose()
    return rates[1:]


async def run(report: Report) -> None:
    ours = statistics.median(await our_decode_rates())
    raw = statistics.median(raw_decode_rates())
    report.add(
        "single-stream decode",
        f"{ours:.1f} tok/s",
        f"raw llama-cpp-python {raw:.1f} tok/s",
        verdict(ours >= raw, f"{ours / raw:.2f}x (target >= 1.0x)"),
    )
