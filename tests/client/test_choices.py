"""n choices for one prompt: read once, decoded together, each with its own seed; the same seed, the same choices."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from llama_isolate import CompletionChoice, CompletionEvent, ContextParams, LlamaLoad, LlamaParent, SamplerParams

from ..helpers.models import first_token

SEEDED = SamplerParams(temperature=1.0, seed=7)
ASK = "Name a fruit."


@pytest.fixture
async def parent(model_path: Path) -> AsyncIterator[LlamaParent]:
    async with LlamaParent(LlamaLoad(path=model_path, context_params=ContextParams(n_ctx=1024, n_parallel=4))) as p:
        yield p


async def choices(parent: LlamaParent, n: int, **options: Any) -> CompletionEvent:
    scope = parent.get_scope()
    pid = await scope.send_prompt(ASK, n=n, max_tokens=10, sampler_params=SEEDED, **options)
    return await parent.wait_for_completion(pid)


async def test_n_choices_come_back_in_order_and_choice_0_is_the_event(parent: LlamaParent) -> None:
    event = await choices(parent, 3)
    assert [c.index for c in event.choices] == [0, 1, 2]
    assert all(isinstance(c, CompletionChoice) and c.text for c in event.choices)
    first = event.choices[0]
    assert (first.text, first.finish_reason) == (event.text, event.finish_reason)
    assert len({c.text for c in event.choices}) > 1  # seeds of their own: they differ


async def test_the_same_seed_gives_the_same_choices_whatever_else_is_in_the_batch(parent: LlamaParent) -> None:
    alone = await choices(parent, 3)
    neighbour = parent.get_scope()
    busy = await neighbour.send_prompt("Count from one to twenty.", max_tokens=60)
    await first_token(neighbour.stream)
    beside = await choices(parent, 3)
    await parent.wait_for_completion(busy)
    single = await choices(parent, 1)
    assert [c.text for c in beside.choices] == [c.text for c in alone.choices]
    assert single.text == alone.text and single.choices == ()


async def test_only_choice_0_joins_the_conversation(parent: LlamaParent) -> None:
    scope = parent.get_scope()
    event = await parent.wait_for_completion(await scope.send_prompt(ASK, n=2, max_tokens=6, sampler_params=SEEDED))
    assert scope.messages[-1] == {"role": "assistant", "content": event.text}
    assert len(scope.messages) == 2


async def test_every_choice_follows_a_json_schema(parent: LlamaParent) -> None:
    schema = {"type": "object", "properties": {"fruit": {"type": "string", "maxLength": 12}}, "required": ["fruit"]}
    scope = parent.get_scope()
    pid = await scope.send_prompt(ASK, n=3, max_tokens=40, sampler_params=SEEDED, json_schema=schema)
    event = await parent.wait_for_completion(pid)
    assert len(event.choices) == 3
    for choice in event.choices:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.text), schema)


async def test_stopping_ends_every_choice_and_frees_their_slots(parent: LlamaParent) -> None:
    scope = parent.get_scope()
    pid = await scope.send_prompt("Count from one to a hundred.", n=4, max_tokens=400, sampler_params=SEEDED)
    await first_token(scope.stream)
    await scope.stop()
    event = await parent.wait_for_completion(pid)
    assert event.finish_reason == "cancelled"
    again = await asyncio.wait_for(choices(parent, 4), 60)  # all 4 slots are free again
    assert len(again.choices) == 4


async def test_each_choice_has_its_own_logprobs(parent: LlamaParent) -> None:
    event = await choices(parent, 3, logprobs=2)
    assert event.logprobs == event.choices[0].logprobs
    for choice in event.choices:
        assert choice.logprobs is not None and len(choice.logprobs) == choice.completion_tokens
        assert b"".join(t.piece for t in choice.logprobs).decode() == choice.text
        assert all(len(t.top) == 2 and t.logprob <= 0 for t in choice.logprobs)
    assert all(c.logprobs is None for c in (await choices(parent, 2)).choices)  # not asked: none


@pytest.mark.parametrize(
    ("n", "options", "words"),
    [(5, {}, "n must be"), (0, {}, "n must be"), (2, {"tools": [{"name": "f"}]}, "n above 1")],
)
async def test_n_is_checked(parent: LlamaParent, n: int, options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        await parent.send_prompt(ASK, n=n, **options)
    assert parent.queue_length == 0
