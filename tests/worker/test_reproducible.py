"""The same request gives the same answer, to the last bit of its log probabilities, whether its prompt came from a
cache or not (docs/parallel.md, "Reproducible answers")."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_isolate import ContextParams, LlamaLoad, LlamaParent, SamplerParams

LONG = "Summarize: " + " ".join(f"Note {i}: the red box is on shelf {i}." for i in range(60))  # about 900 tokens


async def answer(parent: LlamaParent, prompt: str, sampler: SamplerParams) -> tuple[int, str, list[float]]:
    """A fresh conversation's answer: (tokens its prompt took from a cache, text, log probabilities)."""
    scope = parent.get_scope()
    event = await parent.wait_for_completion(
        await scope.send_prompt(prompt, max_tokens=6, sampler_params=sampler, logprobs=1)
    )
    await scope.dispose()
    assert event.success, event.error
    return event.cached_tokens, event.text, [entry.logprob for entry in event.logprobs]


@pytest.mark.parametrize("flash", ["on", "off"])
async def test_a_long_prompt_answers_the_same_from_the_cache_as_fresh(model_path: Path, flash: str) -> None:
    # With flash attention, a lone token deep in the cache and a chunk of many take different kernels: the first
    # log probability was -0.98455 fresh and -0.98232 once the prompt was cached.
    context = ContextParams(n_ctx=2048, n_threads=2, n_threads_batch=2, adapt_threads=False, flash_attention=flash)  # type: ignore[arg-type]
    async with LlamaParent(LlamaLoad(path=model_path, context_params=context)) as parent:
        greedy = SamplerParams(greedy=True)
        fresh = await answer(parent, LONG, greedy)
        cached = await answer(parent, LONG, greedy)
    assert fresh[0] == 0 and cached[0] > 800
    assert cached[1:] == fresh[1:]


async def test_a_seed_gives_the_same_text_from_the_cache_as_fresh(model_path: Path) -> None:
    context = ContextParams(n_ctx=1024, n_threads=2, n_threads_batch=2, adapt_threads=False)
    async with LlamaParent(LlamaLoad(path=model_path, context_params=context)) as parent:
        hot = SamplerParams(temperature=0.9, seed=42)
        answers = [await answer(parent, "Write one sentence about the sea.", hot) for _ in range(3)]
    assert answers[0][0] == 0 and all(cached > 0 for cached, _, _ in answers[1:])
    assert answers[1][1:] == answers[0][1:] == answers[2][1:]


async def test_without_flash_attention_the_thread_count_does_not_change_the_answer(model_path: Path) -> None:
    found = []
    for threads in (1, 2):
        context = ContextParams(
            n_ctx=2048, n_threads=threads, n_threads_batch=threads, adapt_threads=False, flash_attention="off"
        )
        async with LlamaParent(LlamaLoad(path=model_path, context_params=context)) as parent:
            found.append(await answer(parent, LONG, SamplerParams(greedy=True)))
    assert found[0] == found[1]
