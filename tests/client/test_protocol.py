"""Messages cross the process boundary intact, and nothing else crosses it."""

from __future__ import annotations

import pickle

import pytest

from llama_isolate import ContextParams, LlamaLoad, ModelInfo, SamplerParams
from llama_isolate import _protocol as protocol

MESSAGES: list[protocol.Message] = [
    protocol.Load(LlamaLoad(path="m.gguf", context_params=ContextParams(n_ctx=1024))),
    protocol.Submit("p1", "scope-1", (("user", "hi"),), SamplerParams(stop=("\n",)), 16),
    protocol.Cancel(("p1", "p2"), "stopped"),
    protocol.Embed(3, "text", True),
    protocol.Probe(9, (("user", "hi"),)),
    protocol.DropScope("scope-1"),
    protocol.Shutdown(),
    protocol.Hello(123),
    protocol.Loaded(ModelInfo("llama", 1, 2, 3, 4, 5, 6, True)),
    protocol.LoadFailed("not_found", "missing"),
    protocol.Started("p1"),
    protocol.Tokens("p1", "héllo"),
    protocol.Finished(prompt_id="p1", finish_reason="stop", prompt_tokens=3, cached_tokens=2, completion_tokens=4),
    protocol.Finished.failed("p1", "boom"),
    protocol.Finished.unstarted("p1", "cancelled"),
    protocol.Embedding(3, (0.5, -1.0)),
    protocol.Probed(9, 12, 30),
    protocol.SaveScope(4, "scope-1"),
    protocol.ScopeState(4, (1, 2), b"kv"),
    protocol.LoadScope(5, "scope-1", (1, 2), b"kv"),
    protocol.RequestDone(5),
    protocol.Ping(6),
    protocol.Pong(6),
    protocol.RequestFailed(3, "request", "too long"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: protocol.Message) -> None:
    frame = protocol.encode(message)
    length = protocol.frame_length(frame[: protocol.HEADER.size])
    assert length == len(frame) - protocol.HEADER.size
    assert protocol.decode(frame[protocol.HEADER.size :]) == message


def test_a_frame_naming_another_class_is_refused() -> None:
    payload = pickle.dumps(ValueError("boom"))
    with pytest.raises(pickle.UnpicklingError, match="ValueError"):
        protocol.decode(payload)


def test_a_frame_holding_a_bare_parameter_object_is_not_a_message() -> None:
    with pytest.raises(pickle.UnpicklingError, match="not a message"):
        protocol.decode(pickle.dumps(SamplerParams()))


def test_an_absurd_frame_length_is_refused() -> None:
    with pytest.raises(ValueError, match="corrupt"):
        protocol.frame_length(protocol.HEADER.pack(protocol.MAX_FRAME + 1))


def test_every_request_names_the_reply_it_gets() -> None:
    requests = [
        m
        for m in MESSAGES
        if isinstance(m, protocol.Embed | protocol.SaveScope | protocol.LoadScope | protocol.Probe | protocol.Ping)
    ]
    assert {type(r) for r in requests} == set(protocol.REPLY_OF)
    assert {type(m) for m in MESSAGES} >= set(protocol.REPLY_OF.values())
