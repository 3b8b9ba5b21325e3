"""`cached_tokens`: how much of a conversation's prompt a parent's caches hold, asked without changing them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llama_isolate import ContextParams, LlamaLoad, SamplerParams, SyncLlamaParent


@pytest.fixture(scope="module")
def parents(model_path: Path) -> Iterator[tuple[SyncLlamaParent, SyncLlamaParent]]:
    load = LlamaLoad(
        path=model_path,
        context_params=ContextParams(n_ctx=1024, n_parallel=2),
        sampler_params=SamplerParams(greedy=True),
    )
    with SyncLlamaParent(load) as one, SyncLlamaParent(load) as other:
        yield one, other


def test_the_probe_foretells_what_the_next_turn_reuses(parents: tuple[SyncLlamaParent, SyncLlamaParent]) -> None:
    one, other = parents
    scope = one.get_scope()
    first = one.wait_for_completion(scope.send_prompt("Tell me about bread.", max_tokens=8))
    nxt = [*scope.messages, {"role": "user", "content": "And about cheese?"}]
    held = one.cached_tokens(nxt)
    assert held >= first.prompt_tokens + first.cached_tokens  # the first turn, and its reply
    assert other.cached_tokens(nxt) < held  # the other parent has not seen this conversation
    assert one.cached_tokens(nxt) == held  # asking changed nothing
    # a new conversation sent with that history reuses just as much (as a stateless client's next turn does)
    fresh = one.get_scope()
    fresh.messages[:] = scope.messages
    after = one.wait_for_completion(fresh.send_prompt("And about cheese?", max_tokens=4))
    assert after.cached_tokens == held


def test_an_unknown_conversation_holds_at_most_the_template_opening(
    parents: tuple[SyncLlamaParent, SyncLlamaParent],
) -> None:
    one, _ = parents
    question = [{"role": "user", "content": "A question nobody asked before: why is the sky green on Mondays?"}]
    held = one.cached_tokens(question)
    scope = one.get_scope()
    event = one.wait_for_completion(scope.send_prompt(question[0]["content"], max_tokens=2))
    assert held == event.cached_tokens and event.prompt_tokens > 0  # the question itself was read anew


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        ("hello", "must be a list"),
        ([{"role": "user"}], r"messages\[0\] has no 'content'"),
        ([{"role": "user", "content": 3}], r"messages\[0\]\['content'\] must be a str"),
    ],
)
def test_malformed_messages_are_refused_naming_which(
    parents: tuple[SyncLlamaParent, SyncLlamaParent], messages: object, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        parents[0].cached_tokens(messages)  # type: ignore[arg-type]
