"""CompletionLedger: one event per prompt, the last N kept for later waits, tokens fanned out to the streams."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from llama_isolate import (
    CompletionEvent,
    EventStream,
    PromptOptions,
    SamplerParams,
    TokenLogprob,
    TokenStream,
    ToolCallDelta,
)
from llama_isolate import _protocol as protocol
from llama_isolate._client.completions import CompletionLedger, Ending
from llama_isolate._client.queue import PromptRecord

from ..helpers.fake_worker import FakeScope

_ids = itertools.count()


class Streams:
    """The parent's four streams, and what each received."""

    def __init__(self) -> None:
        self.stream = TokenStream()
        self.completions: EventStream[CompletionEvent] = EventStream()
        self.token_logprobs: EventStream[TokenLogprob] = EventStream()
        self.tool_call_deltas: EventStream[ToolCallDelta] = EventStream()
        self.seen: dict[str, list[object]] = {name: [] for name in vars(self) if name != "seen"}
        for name, items in self.seen.items():
            getattr(self, name).listen(items.append)

    def ledger(self, keep: int = 10) -> CompletionLedger:
        return CompletionLedger(keep=keep, streams=self)


def record(scope: FakeScope | None = None) -> PromptRecord:
    return PromptRecord(id=f"p{next(_ids)}", scope=scope, text="hi", sampler=SamplerParams(), max_tokens=4)


def opened(ledger: CompletionLedger, scope: FakeScope | None = None) -> PromptRecord:
    prompt = record(scope)
    ledger.open(prompt)
    return prompt


async def test_the_last_keep_events_stay_answerable_and_older_ones_are_forgotten() -> None:
    ledger = Streams().ledger(keep=2)
    prompts = [opened(ledger) for _ in range(3)]
    events = [ledger.complete(p, Ending("stop")) for p in prompts]
    with pytest.raises(KeyError, match="older than the last keep_completed"):
        await ledger.wait(prompts[0].id)
    assert [await ledger.wait(p.id) for p in prompts[1:]] == events[1:]


async def test_an_unknown_id_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="unknown prompt id 'nobody'"):
        await Streams().ledger().wait("nobody")


async def test_a_wait_begun_before_the_end_gets_the_event_and_so_does_one_after() -> None:
    ledger = Streams().ledger()
    prompt = opened(ledger)
    ledger.token(prompt, "hello")
    asyncio.get_running_loop().call_soon(
        ledger.complete, prompt, Ending("length")
    )  # only once the wait below is waiting
    before = await ledger.wait(prompt.id)
    assert (before.text, before.finish_reason, before.success) == ("hello", "length", True)
    assert await ledger.wait(prompt.id) is before


async def test_a_cancelled_wait_ends_neither_the_prompt_nor_the_other_waits() -> None:
    ledger = Streams().ledger()
    prompt = opened(ledger)
    impatient = asyncio.ensure_future(ledger.wait(prompt.id))
    patient = asyncio.ensure_future(ledger.wait(prompt.id))
    loop = asyncio.get_running_loop()
    loop.call_soon(impatient.cancel)  # both waits are waiting by then (tasks start in the order made)
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert ledger.is_open(prompt.id)
    loop.call_soon(ledger.complete, prompt, Ending("stop"))
    event = await patient
    assert event.finish_reason == "stop" and await ledger.wait(prompt.id) is event


async def test_a_prompt_completes_once_and_its_event_goes_to_the_parent_and_its_scope() -> None:
    streams = Streams()
    ledger = streams.ledger()
    scope, other = FakeScope("mine"), FakeScope("other")
    seen: list[CompletionEvent] = []
    scope.completions.listen(seen.append)
    other_seen: list[CompletionEvent] = []
    other.completions.listen(other_seen.append)
    prompt = opened(ledger, scope)
    event = ledger.complete(prompt, Ending("error", "boom", "engine_error"))
    assert ledger.complete(prompt, Ending("stop")) is None  # a late end changes nothing
    assert event is not None and not event.success and event.error == "boom" and event.error_code == "engine_error"
    assert streams.seen["completions"] == seen == [event]
    assert other_seen == []
    assert not ledger.is_open(prompt.id) and ledger.open_count == 0


async def test_tokens_go_to_the_parents_stream_and_to_their_own_scopes_only() -> None:
    streams = Streams()
    ledger = streams.ledger()
    mine, other = FakeScope("mine"), FakeScope("other")
    shown: dict[str, list[str]] = {"mine": [], "other": []}
    mine.stream.listen(shown["mine"].append)
    other.stream.listen(shown["other"].append)
    in_scope, on_parent = opened(ledger, mine), opened(ledger)
    ledger.token(in_scope, "a")
    ledger.token(on_parent, "b")
    ledger.token(in_scope, "")  # a token held back (a stop string's start): nothing to show
    ledger.token(in_scope, "c")
    assert streams.seen["stream"] == ["a", "b", "c"]
    assert shown == {"mine": ["a", "c"], "other": []}
    assert ledger.complete(in_scope, Ending("stop")).text == "ac"  # type: ignore[union-attr]


async def test_log_probabilities_and_tool_call_pieces_fan_out_the_same_way() -> None:
    streams = Streams()
    ledger = streams.ledger()
    mine = FakeScope("mine")
    logprobs: list[TokenLogprob] = []
    deltas: list[ToolCallDelta] = []
    mine.token_logprobs.listen(logprobs.append)
    mine.tool_call_deltas.listen(deltas.append)
    prompt = opened(ledger, mine)
    prompt.options = PromptOptions(logprobs=1)
    entry: protocol.Logprob = (7, b"hi", -0.5, ((7, b"hi", -0.5), (8, b"yo", -1.5)))
    ledger.token(prompt, "hi", entry)
    delta = ToolCallDelta(index=0, id="call_1", name="f", arguments="")
    ledger.tool_call_delta(prompt, delta)
    assert [(t.token, t.text, t.logprob) for t in logprobs] == [(7, "hi", -0.5)]
    assert [t.text for t in logprobs[0].top] == ["hi", "yo"]
    assert streams.seen["token_logprobs"] == logprobs
    assert streams.seen["tool_call_deltas"] == deltas == [delta]
    event = ledger.complete(prompt, Ending("stop"))
    assert event is not None and event.logprobs == tuple(logprobs)
