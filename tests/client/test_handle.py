"""PromptOptions and PromptHandle: one options object for every facade, one handle per prompt."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from pathlib import Path

import pytest

from llama_isolate import (
    MEDIA_MARKER,
    LlamaFeatureNotEnabled,
    LlamaParent,
    LlamaStatus,
    LlamaStatusError,
    LlamaValueError,
    PromptFields,
    PromptHandle,
    PromptOptions,
    SamplerParams,
    SyncLlamaParent,
    ToolCallDelta,
)

from ..helpers.models import greedy_load, vlm_load
from ..helpers.pictures import RED

ASK = "Name three colours."


async def drain(handle: PromptHandle) -> str:
    return "".join([piece async for piece in handle if isinstance(piece, str)])


# ------------------------------------------------------------------ PromptOptions


def test_every_option_is_a_keyword_override_too() -> None:
    fields = {field.name for field in dataclasses.fields(PromptOptions)}
    assert set(PromptFields.__optional_keys__) == fields and not PromptFields.__required_keys__


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"logprobs": 21}, "logprobs"),
        ({"n": 0}, "n"),
        ({"raw": "yes"}, "raw"),
        ({"sampler_params": {"temperature": 0}}, "sampler_params"),
        ({"stop": "END"}, "stop"),
        ({"stop": ["ok", "\ud800"]}, "stop[1]"),
        ({"images": "a.png"}, "images"),
        ({"trim_history": 1}, "trim_history"),
    ],
)
def test_a_bad_option_is_refused_when_made_naming_it(given: dict[str, object], named: str) -> None:
    with pytest.raises((ValueError, TypeError)) as caught:
        PromptOptions(**given)  # type: ignore[arg-type]
    assert named in str(caught.value)


async def test_keywords_override_the_options_and_unknown_ones_are_named(parent: LlamaParent) -> None:
    options = PromptOptions(max_tokens=2, stop=("never",))
    event = await parent.wait_for_completion(await parent.send_prompt(ASK, options=options, max_tokens=5))
    assert event.completion_tokens == 5 and event.finish_reason == "length"
    event = await parent.wait_for_completion(await parent.send_prompt(ASK, options=options))
    assert event.completion_tokens == 2
    with pytest.raises(TypeError, match="'max_token'"):
        await parent.send_prompt(ASK, max_token=3)  # type: ignore[call-arg]
    assert options == PromptOptions(max_tokens=2, stop=("never",))  # the caller's object is unchanged


async def test_stop_in_the_options_ends_the_reply_there(parent: LlamaParent) -> None:
    whole = await parent.wait_for_completion(await parent.send_prompt("Count: 1, 2, 3, 4, 5,", raw=True, max_tokens=8))
    word = whole.text.split()[1]
    cut = await parent.wait_for_completion(
        await parent.send_prompt("Count: 1, 2, 3, 4, 5,", raw=True, max_tokens=8, stop=[word])
    )
    assert cut.finish_reason == "stop" and word not in cut.text and whole.text.startswith(cut.text)


# ------------------------------------------------------------------ PromptHandle


async def test_a_handle_gives_its_own_pieces_then_its_event_and_keeps_nothing(parent: LlamaParent) -> None:
    other = await parent.send_prompt("Say hello.", max_tokens=12)  # streams at the same time on the parent
    handle = parent.generate(ASK, max_tokens=12)
    text = await drain(handle)
    event = await handle.event
    assert event.prompt_id == handle.id and event.success and handle.done
    assert text == event.text and event.completion_tokens == 12
    assert (await parent.wait_for_completion(other)).text != text  # no pieces of the other prompt came in
    assert [m["role"] for m in parent.messages] == ["user", "assistant"]  # only send_prompt's turn was kept
    assert await drain(handle) == ""  # a second loop ends at once


async def test_a_whole_conversation_is_answered_from_its_last_turn_and_reuses_the_cache(parent: LlamaParent) -> None:
    first = [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": ASK}]
    handle = parent.generate(first, max_tokens=6)
    reply = (await handle.event).text
    follow = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "And one more?"}]
    event = await parent.generate(follow, max_tokens=4).event
    assert event.success and event.cached_tokens > 10  # the first turn's KV was found again
    assert follow[-1] == {"role": "user", "content": "And one more?"} and len(follow) == 4  # the caller's list


@pytest.mark.parametrize(
    ("messages", "named"),
    [
        ([], "must not be empty"),
        ([{"role": "assistant", "content": "Hi"}], "messages[0] is a 'assistant' message"),
        ([{"role": "tool", "content": "42"}], "tool_call_id"),
        ([{"role": "user", "content": "Hi"}, {"role": "user"}], "messages[1]"),
    ],
)
async def test_a_conversation_that_cannot_be_answered_is_refused_at_once(
    parent: LlamaParent, messages: list[dict[str, str]], named: str
) -> None:
    with pytest.raises(ValueError, match=named.replace("[", r"\[")):
        parent.generate(messages)
    assert parent.queue_length == 0 and not parent.is_generating


async def test_cancel_stops_a_running_prompt_within_milliseconds_and_a_queued_one_before_it_starts(
    model_path: Path,
) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=1024, n_parallel=1)) as parent:
        running = parent.generate(ASK, max_tokens=400)
        waiting = parent.generate(ASK, max_tokens=400)
        await running.__anext__()  # it generates
        started = time.monotonic()
        await running.cancel()
        took = time.monotonic() - started
        event = await running.event
        assert event.finish_reason == "cancelled" and took < 0.5, took
        await waiting.cancel()
        queued = await waiting.event
        assert queued.finish_reason == "cancelled" and queued.completion_tokens == 0 and queued.text == ""
        await running.cancel()  # no-op once ended
        assert parent.queue_length == 0 and not parent.is_generating


async def test_leaving_async_with_cancels_the_prompt(parent: LlamaParent) -> None:
    async with parent.generate(ASK, max_tokens=400) as handle:
        async for _ in handle:
            break
    event = await handle.event
    assert event.finish_reason == "cancelled" and not parent.is_generating


async def test_cancelling_a_wait_for_a_piece_loses_nothing(parent: LlamaParent) -> None:
    handle = parent.generate(ASK, max_tokens=8)
    waiting = asyncio.ensure_future(handle.__anext__())
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await drain(handle) == (await handle.event).text


async def test_a_scope_generate_joins_its_conversation_and_its_stream(parent: LlamaParent) -> None:
    scope = parent.get_scope()
    streamed: list[str] = []
    scope.stream.listen(streamed.append)
    async with scope.generate(ASK, max_tokens=6) as handle:
        text = await drain(handle)
    event = await handle.event
    assert event.scope_id == scope.id and "".join(streamed) == text == event.text
    assert scope.messages == [{"role": "user", "content": ASK}, {"role": "assistant", "content": text}]


async def test_tool_call_pieces_come_through_the_handle(parent: LlamaParent) -> None:
    shade = {"type": "object", "properties": {"c": {"enum": ["red"]}}, "required": ["c"]}
    tool = {"type": "function", "function": {"name": "colour", "parameters": shade}}
    handle = parent.generate(ASK, max_tokens=60, tools=[tool], tool_choice="required")
    deltas = [piece async for piece in handle if isinstance(piece, ToolCallDelta)]
    event = await handle.event
    assert deltas and event.tool_calls and event.tool_calls[0].name == "colour"
    assert deltas[0].name == "colour"


async def test_logprobs_are_taken_with_their_pieces(parent: LlamaParent) -> None:
    handle = parent.generate(ASK, max_tokens=4, logprobs=2)
    pieces, entries = [], []
    async for piece in handle:
        pieces.append(piece)
        entries += handle.take_logprobs()
    assert len(entries) == 4 and all(len(e.top) == 2 for e in entries)
    assert b"".join(e.piece for e in entries).decode() == "".join(p for p in pieces if isinstance(p, str))


def test_the_blocking_facade_has_the_same_handle(model_path: Path) -> None:
    load = greedy_load(model_path, n_ctx=1024)
    with SyncLlamaParent(load) as parent:
        with parent.generate(ASK, options=PromptOptions(max_tokens=6)) as handle:
            text = "".join(piece for piece in handle if isinstance(piece, str))
            assert handle.event.text == text and handle.done
        with parent.generate([{"role": "user", "content": ASK}], max_tokens=400) as endless:
            next(iter(endless))
        assert endless.wait(timeout=10).finish_reason == "cancelled"
        scope = parent.get_scope()
        assert scope.generate(ASK, max_tokens=3).wait(timeout=60).success
        assert len(scope.messages) == 2


async def test_sampler_options_reach_the_worker(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=1024)) as parent:
        seeded = PromptOptions(sampler_params=SamplerParams(temperature=1.5, seed=7), max_tokens=8)
        one = await parent.generate(ASK, seeded).event
        two = await parent.generate(ASK, seeded).event
        greedy = await parent.generate(ASK, max_tokens=8).event
        assert one.text == two.text and one.text != greedy.text


# ------------------------------------------------------------------ one default conversation, one name


async def test_the_parents_own_conversation_is_its_default_scope(parent: LlamaParent) -> None:
    default = parent.default_scope
    heard: list[str] = []
    default.stream.listen(heard.append)
    other = parent.get_scope()
    await parent.wait_for_completion(await other.send_prompt(ASK, max_tokens=3))
    event = await parent.wait_for_completion(await parent.send_prompt(ASK, max_tokens=3))
    assert event.scope_id == default.id == "default" and "".join(heard) == event.text
    assert parent.messages is default.messages and len(default.messages) == 2
    follow = await parent.wait_for_completion(await default.send_prompt("More?", max_tokens=3))
    assert follow.cached_tokens > 0 and len(parent.messages) == 4  # the same conversation, its KV kept
    with pytest.raises(LlamaStatusError, match="lives as long as its parent"):
        await default.dispose()
    await default.clear()
    assert parent.messages == [] and not default.disposed


async def test_a_scope_cancel_ends_its_running_and_queued_prompts_and_stop_is_its_old_name(
    parent: LlamaParent,
) -> None:
    scope = parent.get_scope()
    for ending in (scope.cancel, scope.stop):
        running = await scope.send_prompt(ASK, max_tokens=300)
        queued = await scope.send_prompt(ASK, max_tokens=300)
        await ending()
        events = [await parent.wait_for_completion(p) for p in (running, queued)]
        assert [e.finish_reason for e in events] == ["cancelled", "cancelled"]
        assert events[1].completion_tokens == 0


def test_is_ready_means_a_worker_takes_prompts() -> None:
    assert {s for s in LlamaStatus if s.is_ready} == {LlamaStatus.READY, LlamaStatus.GENERATING}


async def test_images_go_as_an_option_or_in_the_last_message(tiny_vlm: tuple[Path, Path]) -> None:
    async with LlamaParent(vlm_load(tiny_vlm)) as parent:
        by_option = await parent.generate("What is it?", images=[RED], max_tokens=3).event
        in_message = [{"role": "user", "content": f"{MEDIA_MARKER}\nWhat is it?", "images": (RED,)}]
        by_message = await parent.generate(in_message, max_tokens=3).event
        assert by_option.success and by_message.success
        whole = by_option.prompt_tokens + by_option.cached_tokens
        assert whole == by_message.prompt_tokens + by_message.cached_tokens > 10  # the picture's tokens, in both
        assert by_message.cached_tokens > 10  # the same prompt: the picture was found in the cache
        with pytest.raises(ValueError, match="give them in one place"):
            parent.generate(in_message, images=[RED])
        with pytest.raises(ValueError, match="raw=True"):
            parent.generate("What is it?", images=[RED], raw=True)
        text_only = await parent.generate("What is it?", max_tokens=3).event
        assert text_only.prompt_tokens + text_only.cached_tokens < whole


def test_generate_before_init_is_a_status_error_not_a_missing_loop(model_path: Path) -> None:
    parent = LlamaParent(greedy_load(model_path))
    with pytest.raises(LlamaStatusError, match="call init"):
        parent.generate(ASK)  # no event loop runs here: the status is what is wrong
    with pytest.raises(LlamaStatusError, match="call init"):
        parent.default_scope.generate(ASK)


class Colour(str, enum.Enum):
    RED = "red"


class Budget(enum.IntEnum):
    SHORT = 3


class Marker(str):
    """A str subclass of the caller's own: pickled by its class, which the worker cannot read."""


async def test_enum_members_and_str_subclasses_are_plain_values_or_refused_never_a_dead_worker(
    parent: LlamaParent,
) -> None:
    pid = parent.worker_pid
    event = await parent.generate(ASK, max_tokens=Budget.SHORT, stop=[Colour.RED, Marker("zz")]).event
    assert event.success and event.completion_tokens <= 3
    history = [{"role": "user", "content": Marker("Hi")}, {"role": "assistant", "content": Colour.RED}]
    assert (await parent.generate([*history, {"role": "user", "content": ASK}], max_tokens=2).event).success
    sampler = SamplerParams(stop=(Marker("x"),))
    assert type(sampler.stop[0]) is str  # made plain when the parameters are made
    pid_sent = await parent.send_prompt(ASK, sampler_params=sampler, max_tokens=2)
    assert (await parent.wait_for_completion(pid_sent)).success
    assert (await parent.generate(ASK, max_tokens=2).event).success and parent.worker_pid == pid


async def test_what_cannot_be_answered_is_refused_at_send_wherever_it_is(parent: LlamaParent) -> None:
    earlier = [{"role": "user", "content": f"{MEDIA_MARKER} what", "images": [RED]}]
    earlier.append({"role": "assistant", "content": "a"})
    with pytest.raises(LlamaFeatureNotEnabled, match="mmproj"):  # images in an earlier turn, no projector
        parent.generate([*earlier, {"role": "user", "content": "And?"}])
    with pytest.raises(LlamaValueError, match="tool_choice needs tools") as caught:
        parent.generate(ASK, tool_choice="required")
    assert caught.value.param == "tool_choice"
    with pytest.raises(LlamaValueError, match="tool_call_id") as caught:
        parent.generate([{"role": "tool", "tool_call_id": 5, "content": "42"}])
    assert caught.value.param == "messages[0].tool_call_id"
    assert parent.queue_length == 0 and not parent.is_generating


def test_a_blocking_handle_still_answers_after_its_parent_is_gone(model_path: Path) -> None:
    with SyncLlamaParent(greedy_load(model_path, n_ctx=1024)) as parent:
        handle = parent.generate(ASK, max_tokens=400)
        next(iter(handle))
    assert handle.done and handle.event.finish_reason == "cancelled"  # dispose cancelled it
    assert isinstance(list(handle), list)  # what was left, and then the end: no error
