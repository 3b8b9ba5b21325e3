"""Single-stream generation speed beside native llama.cpp's `llama-bench` and raw llama-cpp-python.

All three generate `MAX_TOKENS` tokens with the same threads, taking turns
round by round so that the machine's drift falls on each alike; each figure is
the median of `ROUNDS`. Ours counts from the first generated token to the
last, sampling included (greedy, a short plain prompt); llama-bench's
generation test decodes the same count of tokens from an empty cache without
sampling, the bare decode loop. Native is the headline reference when
`LLAMA_BENCH_BIN` or `LLAMA_NATIVE_DIR` gives it (see `native.py`).
"""

from __future__ import annotations

import statistics
import time

from .. import LlamaParent
from . import native
from .common import N_THREADS, STORY, Report, load, model_path

MAX_TOKENS = 128
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

    bench = native.Native.find().bench
    llm = Llama(model_path=model_path(), n_ctx=2048, n_threads=N_THREADS, n_threads_batch=N_THREADS, verbose=False)
    ours: list[float] = []
    raw: list[float] = []
    theirs: list[float] = []
    async with LlamaParent(load(plain=True)) as parent:
        await our_round(parent)  # warm up
        raw_round(llm)
        for _ in range(ROUNDS):
            ours.append(await our_round(parent))
            raw.append(raw_round(llm))
            if bench is not None:
                theirs.append(native.generation(bench, MAX_TOKENS))
        flash = parent.model_info.flash_attention if parent.model_info else None
    del llm
    mine, peer = statistics.median(ours), statistics.median(raw)
    second = f"raw llama-cpp-python {peer:.1f} tok/s ({mine / peer:.2f}x)"
    shown = f"{mine:.1f} tok/s (flash attention {'on' if flash else 'off'})"
    figure = f"single-stream decode, tg{MAX_TOKENS}"
    report.beside_native(figure, ours, theirs, shown=shown, tool="llama-bench", extra=second)
