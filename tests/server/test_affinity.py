"""The routing policy of the Ray Serve router (`llama_isolate.server.affinity`), without a cluster."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from llama_isolate.server.affinity import (
    BLOCK_CHARS,
    MAX_POINTS,
    PrefixLedger,
    ReplicaView,
    conversation_points,
    rank,
)


def chat(*texts: str, system: str | None = None, model: str = "smol") -> dict[str, Any]:
    roles = ["user", "assistant"]
    messages = [{"role": roles[at % 2], "content": text} for at, text in enumerate(texts)]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return {"model": model, "messages": messages}


def holding(*bodies: dict[str, Any], in_flight: int = 0, slots: int | None = 4) -> ReplicaView:
    return ReplicaView({p.key for body in bodies for p in conversation_points(body)}, in_flight, slots)


def test_every_point_of_a_turn_is_a_point_of_the_next_turn_of_the_same_conversation() -> None:
    first = chat("x" * 700)
    later = chat("x" * 700, "an answer " * 40, "and then?")
    earlier, after = conversation_points(first), conversation_points(later)
    assert {p.key for p in earlier} <= {p.key for p in after}
    assert [p.depth for p in earlier] == [256, 512, 706]  # every BLOCK_CHARS, and the message's end (with its role)
    assert conversation_points(chat("y" * 700))[-1].key != earlier[-1].key  # another conversation
    assert conversation_points(chat("x" * 700, model="other"))[0].key != earlier[0].key  # another model


def test_a_point_is_strong_only_past_the_first_message_that_is_not_the_system_prompt() -> None:
    points = conversation_points(chat("hello", system="s" * 600))
    assert [(p.depth, p.strong) for p in points] == [(256, False), (512, False), (608, False), (619, True)]
    prompt = conversation_points({"prompt": "p" * 600})
    assert [(p.depth, p.strong) for p in prompt] == [(256, True), (512, True), (600, True)]
    assert not conversation_points({"prompt": "short"})[0].strong  # a short prompt is likely a shared opening


def test_the_next_turn_goes_to_the_replica_that_served_the_conversation_even_when_busier() -> None:
    first = chat("Tell me about ships.")
    views = [holding(), holding(first, in_flight=2), holding()]
    assert rank(conversation_points(chat("Tell me about ships.", "They float.", "And?")), views)[0] == 1


def test_a_full_replica_is_skipped_for_the_next_best_and_a_deeper_match_beats_a_shorter() -> None:
    opening, deeper = chat("Tell me about ships."), chat("Tell me about ships.", "They float.", "And?")
    request = conversation_points(chat("Tell me about ships.", "They float.", "And?", "Sure.", "More?"))
    views = [holding(opening), holding(deeper, in_flight=8, slots=4), holding()]
    assert rank(request, views) == [0, 2, 1]  # the full one goes last, whatever it holds
    views[1] = holding(deeper, in_flight=7, slots=4)  # every slot busy and some waiting: still worth it
    assert rank(request, views)[:2] == [1, 0]


def test_a_new_conversation_goes_to_the_least_loaded_replica_and_ties_go_to_the_emptiest() -> None:
    new = conversation_points(chat("Something new"))
    assert rank(new, [holding(in_flight=2), holding(in_flight=1), holding(in_flight=3)])[0] == 1
    busy_cache = holding(chat("one"), chat("two"))
    assert rank(new, [busy_cache, holding(chat("three")), holding(chat("four"), chat("five"))])[0] == 1


def test_a_shared_system_prompt_does_not_draw_new_conversations_to_one_replica() -> None:
    system = "You are a careful assistant. " * 40
    views = [holding(chat("first question", system=system)), holding()]
    assert rank(conversation_points(chat("another question", system=system)), views)[0] == 1


def test_a_replica_that_has_not_reported_its_slots_is_never_counted_full() -> None:
    assert not ReplicaView(in_flight=100, slots=None).full
    assert not ReplicaView(in_flight=3, slots=2).full
    assert ReplicaView(in_flight=4, slots=2).full


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "text",
        {"messages": "not a list"},
        {"messages": [1, 2]},
        {"messages": [{"role": 3, "content": {"nested": [1]}}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}, 5]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "bare"}, {"text": 7}]}]},
        {"messages": [{"role": "user", "content": "\ud800 lone surrogate"}]},
        {"prompt": ["a", "list"]},
        {"model": {"not": "a string"}, "prompt": "x"},
    ],
)
def test_any_body_gives_points_or_none_and_never_raises(body: Any) -> None:
    points = conversation_points(body)
    assert all(p.depth > 0 for p in points)


def test_random_json_bodies_never_raise() -> None:
    rng = random.Random(7)

    def value(depth: int) -> Any:
        kinds = [
            lambda: None,
            rng.random,
            lambda: "".join(chr(rng.randrange(0x10FFFF)) for _ in range(rng.randrange(8))),
            lambda: [value(depth + 1) for _ in range(rng.randrange(4))],
            lambda: {rng.choice(["role", "content", "text", "image_url", "url"]): value(depth + 1) for _ in range(3)},
            lambda: {"role": "user", "content": value(depth + 1)},
        ]
        return kinds[rng.randrange(6 if depth < 4 else 3)]()

    for _ in range(500):
        body = {"messages": [value(0) for _ in range(rng.randrange(4))], "prompt": value(2), "model": value(3)}
        json.dumps(body, default=str)
        conversation_points(body)


def test_a_huge_prompt_is_cut_at_max_points() -> None:
    points = conversation_points({"prompt": "z" * (BLOCK_CHARS * (MAX_POINTS + 50))})
    assert len(points) == MAX_POINTS


def test_the_ledger_keeps_the_most_recent_points_up_to_its_capacity() -> None:
    ledger = PrefixLedger(capacity=6)
    old, new = conversation_points(chat("o" * 700)), conversation_points(chat("n" * 700))
    ledger.record(old)
    ledger.record(new)
    assert len(ledger) == 6
    ledger.record(conversation_points(chat("m" * 10)))
    assert set(ledger.keys()) >= {p.key for p in new} and old[0].key not in ledger
    ledger.record(old[:1])  # used again: the newest now
    assert ledger.keys()[-1] == old[0].key
