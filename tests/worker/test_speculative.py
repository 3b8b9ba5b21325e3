"""Speculative decoding on real models: the text is the model's own, whatever the drafts were."""

from __future__ import annotations

import asyncio
import json
import math
import string
import time
from collections import Counter
from pathlib import Path

import pytest

from llama_isolate import (
    LlamaInvalidModel,
    LlamaLoad,
    LlamaParent,
    PromptHandle,
    SamplerParams,
    Speculative,
    TokenLogprob,
)
from llama_isolate.testing import make_tiny_model

from ..helpers.models import one_thread_load

CODE = """def merge(a, b):
    result = []
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            result.append(a[i])
            i += 1
        else:
            result.append(b[j])
            j += 1
    return result + a[i:] + b[j:]
"""
REPEAT = "Copy this code exactly, and nothing else:\n\n" + CODE
FREE = "Write a short story about a cat who finds a key."
SENTENCES = "Repeat this sentence five times: The quick brown fox jumps over the lazy dog."
ALWAYS = Speculative(adaptive=False, max_draft=8)  # drafts at every match: the most checks per token


async def answer(parent: LlamaParent, prompt: str, **options: object) -> tuple[str, PromptHandle]:
    handle = parent.generate(prompt, **options)  # type: ignore[arg-type]
    text = "".join([piece async for piece in handle if isinstance(piece, str)])
    return text, handle


async def answers(load: LlamaLoad, prompts: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """Each prompt's text, draft tokens and accepted draft tokens."""
    return [(text, drafted, kept) for text, _, drafted, kept in await answers_with_logprobs(load, prompts)]


async def answers_with_logprobs(
    load: LlamaLoad, prompts: list[tuple[str, int]]
) -> list[tuple[str, list[TokenLogprob], int, int]]:
    """Each prompt's text, its tokens (with the two likeliest at each), draft tokens and accepted draft tokens."""
    out = []
    async with LlamaParent(load) as parent:
        for prompt, max_tokens in prompts:
            text, handle = await answer(parent, prompt, max_tokens=max_tokens, logprobs=2)
            timings = (await handle.event).timings
            out.append((text, handle.take_logprobs(), timings.draft_tokens, timings.draft_accepted))
    return out


def first_difference(plain: list[TokenLogprob], drafted: list[TokenLogprob]) -> int | None:
    return next((i for i, (a, b) in enumerate(zip(plain, drafted, strict=False)) if a.token != b.token), None)


def same_or_apart_at_a_near_tie(
    text: str, logprobs: list[TokenLogprob], same: str, same_logprobs: list[TokenLogprob]
) -> None:
    """The two greedy texts are equal, or part where the first one's two best tokens were within 0.5: the other
    text then took the other of the two, never a token the model ranked lower, or one it was sure against."""
    at = first_difference(logprobs, same_logprobs)
    if at is None:
        assert same == text
        return
    best, taken = logprobs[at], same_logprobs[at]
    theirs = dict((alt.token, alt.logprob) for alt in best.top)
    assert taken.token in theirs and abs(best.logprob - theirs[taken.token]) < 0.5, (at, best, taken)


async def test_greedy_text_with_speculation_is_the_text_without_it(model_path: Path) -> None:
    prompts = [(REPEAT, 120), (FREE, 60)]
    plain = await answers_with_logprobs(one_thread_load(model_path, n_ctx=1024), prompts)
    checked = kept = 0
    for spec in (ALWAYS, Speculative()):
        drafted = await answers_with_logprobs(one_thread_load(model_path, spec, n_ctx=1024), prompts)
        for (text, logprobs, *_), (same, same_logprobs, n_drafted, n_kept) in zip(plain, drafted, strict=True):
            assert same == text and len(text) > 40, (spec, text, same)
            assert same_logprobs == logprobs  # bit for bit: a checked row computed as a lone token is
            checked, kept = checked + n_drafted, kept + n_kept
    assert 0 < kept < checked, (kept, checked)  # drafts were checked, some kept and some thrown away


async def test_on_gemma_greedy_text_with_speculation_leaves_the_text_only_at_a_near_tie(gemma_path: Path) -> None:
    """On Gemma 3 270M (Q4_K_M) llama.cpp computes a several-token row with other kernels than a lone token, even
    with flash attention on and one thread (logits 0.2-0.9 apart here, measured with llama.cpp alone), and the
    difference carries through the cache. So its greedy text may take the other branch where its two best
    tokens are within that: the token taken is then the other of the two, and never a token the model ranked
    lower, or one it was sure against."""
    prompts = [
        (SENTENCES, 120),
        (FREE, 60),
        ("Write the alphabet in capital letters, separated by spaces, twice.", 100),
    ]
    plain = await answers_with_logprobs(one_thread_load(gemma_path, n_ctx=1024), prompts)
    drafted = await answers_with_logprobs(one_thread_load(gemma_path, ALWAYS, n_ctx=1024), prompts)
    assert sum(n for *_, n in drafted) > 0
    for (text, logprobs, *_), (same, same_logprobs, *_) in zip(plain, drafted, strict=True):
        assert len(text) > 40
        same_or_apart_at_a_near_tie(text, logprobs, same, same_logprobs)


async def test_a_draft_model_gives_the_same_greedy_text(model_path: Path) -> None:
    prompts = [(FREE, 40)]
    plain = await answers(one_thread_load(model_path, n_ctx=512), prompts)
    draft = Speculative(mode="draft", draft_model_path=model_path, max_draft=4, adaptive=False)  # it never pays here
    ((text, drafted, kept),) = await answers(one_thread_load(model_path, draft, n_ctx=512), prompts)
    assert text == plain[0][0] and drafted > 0 and kept == drafted  # the model as its own draft: never wrong


async def test_a_draft_model_with_another_vocabulary_is_refused_at_load(model_path: Path, gemma_path: Path) -> None:
    load = one_thread_load(model_path, Speculative(mode="draft", draft_model_path=gemma_path), n_ctx=512)
    parent = LlamaParent(load)
    with pytest.raises(LlamaInvalidModel, match=r"cannot draft for this model.*vocabulary"):
        await parent.init()
    await parent.dispose()


async def test_json_schema_stop_strings_logprobs_and_n_keep_working_with_speculation(model_path: Path) -> None:
    record = {"name": "Ada Lovelace", "born": 1815, "field": "mathematics", "known_for": "the analytical engine"}
    schema = {
        "type": "object",
        "properties": {key: {"type": "integer" if key == "born" else "string"} for key in record},
        "required": list(record),
        "additionalProperties": False,
    }
    ask_json = f"Repeat this JSON object exactly: {json.dumps(record)}"
    cases: list[tuple[str, dict[str, object]]] = [
        (ask_json, {"json_schema": schema, "max_tokens": 80}),
        (REPEAT, {"stop": ["i += 1"], "max_tokens": 120}),
        (REPEAT, {"logprobs": 2, "max_tokens": 40}),
        (REPEAT, {"n": 2, "max_tokens": 40}),
    ]
    results = []
    for spec in (None, ALWAYS):
        async with LlamaParent(one_thread_load(model_path, spec, n_ctx=1024, n_parallel=2)) as parent:
            runs = []
            for prompt, options in cases:
                text, handle = await answer(parent, prompt, **options)
                event = await handle.event
                runs.append((text, event, handle.take_logprobs()))
            results.append(runs)
    (plain, drafted) = results
    for (text, event, logprobs), (same, with_drafts, same_logprobs) in zip(plain, drafted, strict=True):
        assert same == text and with_drafts.success
        assert [c.text for c in with_drafts.choices] == [c.text for c in event.choices]
        assert same_logprobs == logprobs
    parsed = json.loads(drafted[0][0])
    assert set(parsed) == set(record) and isinstance(parsed["born"], int)
    assert "i += 1" not in drafted[1][0] and drafted[1][1].finish_reason == "stop"
    assert len(drafted[2][2]) == drafted[2][1].completion_tokens and all(len(e.top) == 2 for e in drafted[2][2])
    assert len(drafted[3][1].choices) == 2
    assert sum(run[1].timings.draft_tokens for run in drafted) > 0


@pytest.mark.parametrize("mode", ["ngram", "draft"])
async def test_a_cancel_during_a_check_stops_within_a_fraction_of_the_step(mode: str, model_path: Path) -> None:
    long_copy = "Copy this code exactly, three times:\n\n" + CODE
    # Each step guesses up to 48 tokens (a draft model: 48 decodes of its own) and checks 49 rows: a long step.
    deep = Speculative(adaptive=False, max_draft=48)
    if mode == "draft":
        deep = Speculative(mode="draft", draft_model_path=model_path, adaptive=False, max_draft=48)
    async with LlamaParent(one_thread_load(model_path, deep, n_ctx=2048)) as parent:
        handle = parent.generate(long_copy, max_tokens=1500)
        pieces = 0
        async for _ in handle:
            pieces += 1
            if pieces == 60:  # well into the copy, where every step checks a long draft
                break
        started = time.monotonic()
        await handle.cancel()
        took = time.monotonic() - started
        event = await handle.event
    assert event.finish_reason == "cancelled"
    steps = event.completion_tokens - event.timings.draft_accepted
    step_s = event.completion_tokens / event.timings.tokens_per_second / steps
    assert event.timings.draft_tokens > 0 and took < 0.5 * step_s, (took, step_s)


async def test_sampled_tokens_follow_the_model_distribution_with_speculation(tmp_path: Path) -> None:
    """Where a draft was checked, the token taken there is distributed as without drafts (two-sample bound)."""
    path = make_tiny_model(tmp_path)
    # Every token the model may sample (its byte and control tokens are banned) is in the prompt, so every step
    # after the first has an n-gram match, and checks a draft.
    printable = string.ascii_letters + string.digits + string.punctuation
    prompt = (printable + " " + " ".join(printable)) * 2  # " !" holds the lone word-start token
    samples = 400
    seen: list[Counter[tuple[int, ...]]] = []
    for spec in (None, Speculative(adaptive=False, max_draft=3, min_ngram=1, max_ngram=2)):
        counts: Counter[tuple[int, ...]] = Counter()
        drafted = 0
        sampler = SamplerParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
        async with LlamaParent(one_thread_load(path, spec, sampler=sampler, n_ctx=512)) as parent:
            for seed in range(samples):
                handle = parent.generate(
                    prompt, raw=True, max_tokens=3, logprobs=1, sampler_params=sampler_seeded(seed)
                )
                await handle.event
                tokens = tuple(entry.token for entry in handle.take_logprobs())
                counts[tokens[1:2]] += 1  # the token sampled where the first draft token was checked
                drafted += (await handle.event).timings.draft_tokens
        assert spec is None or drafted >= samples, drafted  # a draft at the second token of every answer
        seen.append(counts)
    plain, speculative = seen
    categories = set(plain) | set(speculative)
    # Hoeffding for the difference of two means of `samples` draws in [0, 1], with a union bound over the
    # categories: exceeded with probability below 1e-4 when both come from one distribution.
    bound = math.sqrt(2 * math.log(2 * len(categories) / 1e-4) / samples)
    worst = max(abs(plain[c] - speculative[c]) / samples for c in categories)
    assert worst < bound, (worst, bound, plain.most_common(5), speculative.most_common(5))
    assert len(plain) > 3  # the model does sample: a test of a distribution, not of one answer


def sampler_seeded(seed: int) -> SamplerParams:
    """Plain sampling at temperature 1, with the tiny model's 259 control and byte tokens banned."""
    banned = tuple((token, float("-inf")) for token in range(259))
    return SamplerParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed, logit_bias=banned)


async def test_batched_conversations_give_their_greedy_texts_with_speculation(model_path: Path) -> None:
    """Three conversations at once, with and without speculation. How their prompts share steps depends on when
    each arrives (one step for all three, or several), and a step of many rows is computed with other kernels
    than a step of few, even on one thread: once (a busy CI machine) the first token of one answer came out the
    other of its two best. So each text is the same, or parts from the other only at a near-tie."""
    prompts = [REPEAT, FREE, f"Repeat after me: {CODE[:120]}"]
    runs = []
    for spec in (None, Speculative()):
        async with LlamaParent(one_thread_load(model_path, spec, n_ctx=1024, n_parallel=3)) as parent:
            answered = await asyncio.gather(*(answer(parent, p, max_tokens=50, logprobs=2) for p in prompts))
            runs.append([(text, handle.take_logprobs()) for text, handle in answered])
    for (text, logprobs), (same, same_logprobs) in zip(*runs, strict=True):
        assert len(text) > 40
        same_or_apart_at_a_near_tie(text, logprobs, same, same_logprobs)
