"""Continuous batching: several scopes decode together, each exactly as it would alone."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from llama_isolate import CompletionEvent, LlamaParent, LlamaScope
from llama_isolate._worker.cache import common_prefix

from ..helpers.models import first_token, greedy_load

PROMPTS = ["Name three fruits.", "Describe the moon in one sentence.", "Say hello in French.", "What do cats eat?"]


# Batched decoding adds its numbers in another order than decoding alone (the batch's shape depends on when each
# prompt arrived), so a greedy choice between two nearly tied tokens may go the other way. SmolLM2-135M has such
# ties in these very replies (0.003-0.07 nats apart, measured). A reply that took another conversation's tokens, or
# lost its own, splits where its choice was not close at all.
NEAR_TIE = 0.15


async def run_alone(model_path: Path, prompts: list[str], max_tokens: int) -> list[CompletionEvent]:
    async with LlamaParent(greedy_load(model_path, n_ctx=1024)) as parent:
        events = []
        for prompt in prompts:
            scope = parent.get_scope()
            pid = await scope.send_prompt(prompt, max_tokens=max_tokens, logprobs=5)
            events.append(await parent.wait_for_completion(pid))
        return events


def assert_as_if_alone(batched: CompletionEvent, alone: CompletionEvent) -> None:
    """The same tokens; or the same up to one choice that was a near tie alone, where the two may go apart."""
    ours, theirs = [t.token for t in batched.logprobs], [t.token for t in alone.logprobs]
    split = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    if split is None:
        assert batched.text == alone.text
        return
    likely = {t.token: t.logprob for t in alone.logprobs[split].top}
    assert ours[split] in likely, f"token {split} of {alone.text!r} went to an unlikely token"
    assert likely[theirs[split]] - likely[ours[split]] < NEAR_TIE, f"token {split} of {alone.text!r} was no tie"


async def test_scopes_streaming_at_once_each_get_their_own_text_as_if_alone(model_path: Path) -> None:
    alone = await run_alone(model_path, PROMPTS, 24)
    async with LlamaParent(greedy_load(model_path, n_ctx=1024, n_parallel=4)) as parent:
        scopes = [parent.get_scope() for _ in PROMPTS]
        streams: list[list[str]] = [[] for _ in PROMPTS]
        for scope, chunks in zip(scopes, streams, strict=True):
            scope.stream.listen(chunks.append)
        ids = [await s.send_prompt(p, max_tokens=24, logprobs=5) for s, p in zip(scopes, PROMPTS, strict=True)]
        events = [await parent.wait_for_completion(i) for i in ids]
    for batched, single in zip(events, alone, strict=True):
        assert_as_if_alone(batched, single)
    assert ["".join(chunks) for chunks in streams] == [e.text for e in events]  # each stream had its own text
    # They really ran together: every prompt had its first token before any had finished.
    firsts = [e.timings.first_token_s for e in events]
    assert all(f is not None for f in firsts)
    assert max(f for f in firsts if f is not None) < min(e.timings.total_s for e in events)


async def test_more_scopes_than_slots_queue_fifo_and_still_match_alone(model_path: Path) -> None:
    prompts = [*PROMPTS, "List two colors.", "What is water made of?"]
    alone = await run_alone(model_path, prompts, 12)
    async with LlamaParent(greedy_load(model_path, n_ctx=1024, n_parallel=2)) as parent:
        finished: list[str] = []
        parent.completions.listen(lambda e: finished.append(e.prompt_id))
        ids = [await parent.get_scope().send_prompt(p, max_tokens=12, logprobs=5) for p in prompts]
        events = [await parent.wait_for_completion(i) for i in ids]
    for batched, single in zip(events, alone, strict=True):
        assert_as_if_alone(batched, single)
    assert sorted(finished) == sorted(ids)


async def conversation(parent: LlamaParent, scope: LlamaScope, prompt: str) -> CompletionEvent:
    return await parent.wait_for_completion(await scope.send_prompt(prompt, max_tokens=12))


async def test_second_turn_after_another_scope_processes_only_the_new_tokens(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=2048)) as parent:  # one slot: B evicts A
        a, b = parent.get_scope(), parent.get_scope()
        a1 = await conversation(parent, a, "My favourite animal is the otter. " * 20)
        await conversation(parent, b, "Tell me about volcanoes.")
        a2 = await conversation(parent, a, "What is my favourite animal?")
    history = a1.prompt_tokens + a1.completion_tokens
    assert a1.cached_tokens == 0
    assert a2.cached_tokens >= history - 1  # all of turn one, parked and restored
    assert a2.prompt_tokens < 25  # only the new user turn and the template around it


async def test_without_ram_for_parked_caches_the_history_is_processed_again(model_path: Path) -> None:
    load = greedy_load(model_path, n_ctx=2048, cache_ram_mib=0)
    async with LlamaParent(load) as parent:
        a, b = parent.get_scope(), parent.get_scope()
        a1 = await conversation(parent, a, "My favourite animal is the otter.")
        a2 = await conversation(parent, a, "And my second favourite is the badger.")  # same slot: cached
        await conversation(parent, b, "Tell me about volcanoes.")
        a3 = await conversation(parent, a, "Which animals did I name?")
    assert a2.cached_tokens >= a1.prompt_tokens
    # Only what every conversation starts with (the template's system prompt,
    # shared with b's cache in the slot) is reused; a's own turns are not.
    assert a3.cached_tokens < 32
    assert a3.prompt_tokens > a2.prompt_tokens + a2.cached_tokens - 32


async def test_scope_stop_with_several_active_sequences_stops_only_that_scope(model_path: Path) -> None:
    prompts = ["Write a long story about a fox.", "Name three fruits.", "Describe the moon in one sentence."]
    alone = await run_alone(model_path, prompts[1:], 20)
    async with LlamaParent(greedy_load(model_path, n_ctx=1024, n_parallel=3)) as parent:
        scopes = [parent.get_scope() for _ in prompts]
        ids = [
            await s.send_prompt(p, max_tokens=300 if i == 0 else 20, logprobs=5)
            for i, (s, p) in enumerate(zip(scopes, prompts, strict=True))
        ]
        await first_token(*(s.stream for s in scopes))
        await scopes[0].stop()
        events = [await parent.wait_for_completion(i) for i in ids]
    assert events[0].finish_reason == "cancelled"
    assert events[0].completion_tokens < 300
    # The others lost nothing to the aborted batch they shared: the same tokens as alone.
    for batched, single in zip(events[1:], alone, strict=True):
        assert_as_if_alone(batched, single)
    assert all(e.finish_reason in ("stop", "length") for e in events[1:])


async def test_parent_stop_stops_every_running_sequence_and_keeps_the_queue(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=1024, n_parallel=2)) as parent:
        scopes = [parent.get_scope() for _ in range(3)]
        ids = [await s.send_prompt("Write a long story about the sea.", max_tokens=300) for s in scopes]
        await first_token(*(s.stream for s in scopes[:2]))
        await parent.stop()
        stopped = [await parent.wait_for_completion(i) for i in ids[:2]]
        assert [e.finish_reason for e in stopped] == ["stopped", "stopped"]
        await first_token(scopes[2].stream)  # the queued one starts after the stop
        await parent.stop()
        assert (await parent.wait_for_completion(ids[2])).finish_reason == "stopped"


async def test_a_long_prompt_admitted_mid_generation_does_not_freeze_the_others(model_path: Path) -> None:
    long_prompt = "Summarize these notes. " + " ".join(f"Note {i}: the red box is on shelf {i}." for i in range(60))
    async with LlamaParent(greedy_load(model_path, n_ctx=2048, n_parallel=2)) as parent:
        talker, reader = parent.get_scope(), parent.get_scope()
        talked: list[str] = []
        talker.stream.listen(talked.append)
        await talker.send_prompt("Write a very long story about a fox.", max_tokens=400)
        await first_token(talker.stream)
        reading = await reader.send_prompt(long_prompt, max_tokens=4)
        before = len(talked)
        await first_token(reader.stream)
        during = len(talked) - before
        event = await parent.wait_for_completion(reading)
        await talker.stop()
    assert event.prompt_tokens > 700
    # The long prompt was read in small chunks between the talker's tokens; in
    # whole 512-token batches the talker would have got about 2 tokens.
    assert during >= 6, f"the talker got {during} tokens while a {event.prompt_tokens}-token prompt was read"


SYSTEM = "You are a patient tutor for children. " + "Always answer with one short example. " * 24


async def test_a_new_scope_reuses_the_system_prompt_another_conversation_left(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=2048, n_parallel=2)) as parent:
        a, b = parent.get_scope(), parent.get_scope()
        a.messages.append({"role": "system", "content": SYSTEM})
        b.messages.append({"role": "system", "content": SYSTEM})
        a1 = await conversation(parent, a, "What is a prime number?")
        b1 = await conversation(parent, b, "What is a noun?")
        a2 = await conversation(parent, a, "Another example, please.")
    assert a1.cached_tokens < 32  # only the template's opening is shared with nothing yet
    assert b1.cached_tokens >= 150  # the whole system prompt (~190 tokens), from a's cache
    assert b1.prompt_tokens < 32  # only b's own question
    # a's cache was copied to RAM before b took its slot: a's history is still reused whole.
    assert a2.cached_tokens >= a1.prompt_tokens + a1.cached_tokens


async def test_a_stateless_client_resending_the_history_reuses_the_last_turn_cache(model_path: Path) -> None:
    """As over HTTP: each turn is a new scope given the whole conversation, disposed after."""
    async with LlamaParent(greedy_load(model_path, n_ctx=2048, n_parallel=2)) as parent:
        first = parent.get_scope()
        t1 = await conversation(parent, first, "Tell me about otters.")
        history = list(first.messages)
        await first.dispose()
        other = parent.get_scope()  # an unrelated client in between
        await conversation(parent, other, "Name a colour.")
        again = parent.get_scope()
        again.messages[:] = history
        t2 = await conversation(parent, again, "Where do they live?")
    # Turn one's prompt and almost all of its answer (its last tokens may be
    # tokenized differently when the template renders them back) are reused.
    assert t2.cached_tokens >= t1.prompt_tokens + t1.cached_tokens + t1.completion_tokens - 4


async def test_new_conversations_start_from_a_copy_of_the_shared_template_opening(model_path: Path) -> None:
    """With empty slots free, a prompt that shares only the chat template's opening (SmolLM2's default
    system prompt) with another conversation's cache starts from a copy of it: that cache stays whole."""
    async with LlamaParent(greedy_load(model_path, n_ctx=2048, n_parallel=3)) as parent:
        first = parent.get_scope()
        t1 = await conversation(parent, first, "Tell me about otters.")
        history = list(first.messages)
        await first.dispose()
        others = []
        for question in ("Name a colour.", "Name a fruit."):
            scope = parent.get_scope()
            others.append(await conversation(parent, scope, question))
            await scope.dispose()
        again = parent.get_scope()
        again.messages[:] = history
        t2 = await conversation(parent, again, "Where do they live?")
    assert t1.cached_tokens == 0
    assert all(other.cached_tokens >= 16 for other in others), [o.cached_tokens for o in others]
    assert t2.cached_tokens >= t1.prompt_tokens + t1.completion_tokens - 4


async def test_a_short_prompt_gets_its_parked_cache_back(model_path: Path) -> None:
    """One slot: a stateless client's prompt comes again after another took the slot; its cache (the
    prompt and a long answer) was parked, and the prompt alone is worth restoring it for."""
    question = "Tell me about the history of bread in ancient Egypt and Rome."
    async with LlamaParent(greedy_load(model_path, n_ctx=2048)) as parent:
        for text in (question, "Name a colour.", question):
            scope = parent.get_scope()
            event = await parent.wait_for_completion(await scope.send_prompt(text, max_tokens=60))
            await scope.dispose()
    assert event.prompt_tokens + event.cached_tokens < 64  # shorter than what a parked state used to need
    assert event.prompt_tokens <= 1  # all of it was in the parked cache


@given(st.lists(st.integers(0, 3), max_size=40), st.lists(st.integers(0, 3), max_size=40))
def test_common_prefix_counts_the_shared_leading_tokens(a: list[int], b: list[int]) -> None:
    naive = 0
    while naive < min(len(a), len(b)) and a[naive] == b[naive]:
        naive += 1
    assert common_prefix(a, b) == naive
    assert common_prefix(tuple(a), b) == naive
