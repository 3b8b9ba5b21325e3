"""logprobs=k: each generated token with its log probability and the k most likely alternatives."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llama_isolate import LlamaParent, SamplerParams, SyncLlamaParent, TokenLogprob

from ..helpers.models import greedy_load

GREEDY = SamplerParams(greedy=True)


async def test_each_token_comes_with_its_logprob_and_the_top_alternatives(parent: LlamaParent) -> None:
    scope = parent.get_scope()
    streamed: list[TokenLogprob] = []
    scope.token_logprobs.listen(streamed.append)
    pid = await scope.send_prompt("Name three fruits.", max_tokens=10, logprobs=3, sampler_params=GREEDY)
    event = await parent.wait_for_completion(pid)
    assert event.logprobs is not None and len(event.logprobs) == event.completion_tokens
    assert "".join(entry.text for entry in event.logprobs) == event.text
    assert b"".join(entry.piece for entry in event.logprobs).decode() == event.text
    assert list(event.logprobs) == streamed
    for entry in event.logprobs:
        assert len(entry.top) == 3
        assert [t.logprob for t in entry.top] == sorted((t.logprob for t in entry.top), reverse=True)
        assert entry.logprob <= 0.0 and sum(math.exp(t.logprob) for t in entry.top) <= 1.0 + 1e-6
        # greedy takes the most likely token: it heads the alternatives, with the same log probability
        assert entry.top[0].token == entry.token and entry.top[0].logprob == pytest.approx(entry.logprob)


async def test_logprobs_zero_gives_the_chosen_tokens_only(parent: LlamaParent) -> None:
    pid = await parent.send_prompt("Say hi.", max_tokens=4, logprobs=0, sampler_params=GREEDY)
    event = await parent.wait_for_completion(pid)
    assert event.logprobs and all(entry.top == () for entry in event.logprobs)


async def test_without_logprobs_nothing_is_computed_or_sent(parent: LlamaParent) -> None:
    streamed: list[TokenLogprob] = []
    parent.token_logprobs.listen(streamed.append)
    event = await parent.wait_for_completion(await parent.send_prompt("Say hi.", max_tokens=4))
    assert event.logprobs is None and streamed == []


async def test_a_stop_strings_tokens_are_left_out_of_the_events_logprobs(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=512)) as parent:
        sampling = SamplerParams(greedy=True, stop=(" 7",))
        pid = await parent.send_prompt("1, 2, 3, 4,", raw=True, max_tokens=12, logprobs=1, sampler_params=sampling)
        event = await parent.wait_for_completion(pid)
    assert event.text == " 5, 6,"
    assert event.logprobs is not None
    assert "".join(entry.text for entry in event.logprobs) == event.text


async def test_logprobs_under_a_json_schema_follow_the_reply(parent: LlamaParent) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    pid = await parent.send_prompt("Is water wet?", json_schema=schema, logprobs=2, max_tokens=20)
    event = await parent.wait_for_completion(pid)
    assert event.finish_reason == "stop" and event.logprobs is not None
    assert "".join(entry.text for entry in event.logprobs) == event.text


@pytest.mark.parametrize("bad", [-1, 21, 2.0, True, "3"])
async def test_logprobs_outside_0_to_20_are_refused(parent: LlamaParent, bad: object) -> None:
    with pytest.raises(ValueError, match="logprobs"):
        await parent.send_prompt("hi", logprobs=bad)  # type: ignore[arg-type]
    assert parent.queue_length == 0


def test_the_sync_facade_streams_token_logprobs(model_path: Path) -> None:
    with SyncLlamaParent(greedy_load(model_path, n_ctx=512)) as parent:
        scope = parent.get_scope()
        seen: list[TokenLogprob] = []
        scope.token_logprobs.listen(seen.append)
        event = parent.wait_for_completion(scope.send_prompt("Say hi.", max_tokens=4, logprobs=1))
        assert event.logprobs is not None
        # listen() callbacks run on the facade's thread; the event comes after the last of them
        assert [entry.token for entry in seen] == [entry.token for entry in event.logprobs]
