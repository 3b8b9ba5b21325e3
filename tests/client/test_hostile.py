"""Hostile input is normal input: whatever a caller sends, the worker keeps serving.

Each case here once killed the worker or wedged the parent. Now the request
that was wrong gets a clear, typed error naming what was wrong, the worker's
pid does not change, and every other request carries on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import psutil
import pytest

from llama_isolate import (
    MEDIA_MARKER,
    LlamaImage,
    LlamaParent,
    LlamaStateError,
    LlamaStatus,
    SamplerParams,
)
from llama_isolate import _protocol as protocol
from llama_isolate._client.worker_link import WorkerLink

from ..helpers.models import first_token, greedy_load, vlm_load
from ..helpers.pictures import RED, png_header

UNSATISFIABLE = r"root ::= [^\x00-\U0010FFFF]"


async def still_serving(parent: LlamaParent, pid: int | None) -> None:
    """The same worker answers a fresh prompt."""
    assert parent.worker_pid == pid
    event = await parent.wait_for_completion(await parent.get_scope().send_prompt("Hi", max_tokens=3))
    assert event.success, event.error
    assert parent.status is LlamaStatus.READY


# ---------------------------------------------------------------- malformed conversations


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"content": "no role"}, "has no 'role'"),
        ({"role": "user"}, "has no 'content'"),
        ({"role": 3, "content": "x"}, r"\['role'\] must be a str"),
        ({"role": "user", "content": "x", "images": "nope"}, r"\['images'\] must be a sequence"),
        ({"role": "user", "content": "x", "images": [b"png"]}, r"\['images'\]\[0\] must be a LlamaImage"),
        ("just text", "must be a dict"),
    ],
)
async def test_a_malformed_message_is_a_value_error_naming_it(parent: LlamaParent, entry: object, named: str) -> None:
    pid = parent.worker_pid
    scope = parent.get_scope()
    scope.messages.append(entry)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=named):
        await scope.send_prompt("Hello")
    assert parent.queue_length == 0 and not parent.is_generating
    await still_serving(parent, pid)


async def test_a_conversation_broken_while_its_prompt_waits_fails_that_prompt_alone(parent: LlamaParent) -> None:
    pid = parent.worker_pid
    busy, broken = parent.get_scope(), parent.get_scope()
    running = await busy.send_prompt("Count to twenty.", max_tokens=30)
    waiting = await broken.send_prompt("Hello")  # queued behind the running one (one slot)
    broken.messages.insert(0, {"role": "user"})  # edited into something malformed before it starts
    after = await busy.send_prompt("And again.", max_tokens=4)
    events = {p: await parent.wait_for_completion(p) for p in (running, waiting, after)}
    assert events[running].success and events[after].success
    assert not events[waiting].success
    assert "has no 'content'" in (events[waiting].error or "")
    await still_serving(parent, pid)


async def test_a_saved_state_with_a_malformed_message_is_refused_naming_it(parent: LlamaParent) -> None:
    scope = parent.get_scope()
    await parent.wait_for_completion(await scope.send_prompt("Hi", max_tokens=2))
    data = await scope.save_state()
    broken = data.replace(b'"role": "assistant"', b'"rolx": "assistant"')  # same length: only the field is wrong
    assert broken != data
    with pytest.raises(LlamaStateError, match=r"messages\[1\] has no 'role'") as info:
        await parent.get_scope().load_state(broken)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- callbacks that misbehave


async def test_a_listener_raising_cancelled_error_does_not_stop_the_parent(parent: LlamaParent) -> None:
    def hostile(_: object) -> None:
        raise asyncio.CancelledError

    parent.stream.listen(hostile)
    parent.completions.listen(hostile)
    first = await parent.wait_for_completion(await parent.send_prompt("Hi", max_tokens=4))
    second = await parent.wait_for_completion(await parent.send_prompt("Again", max_tokens=4))
    assert first.success and second.success
    assert parent.status is LlamaStatus.READY


async def test_if_the_channel_breaks_anyway_every_pending_prompt_fails_and_the_status_says_error(
    parent: LlamaParent, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_isolate._client import process

    running = await parent.send_prompt("Write a long story.", max_tokens=500)
    queued = await parent.send_prompt("And another.", max_tokens=5)
    await first_token(parent)

    def corrupt(_: object) -> object:
        raise ValueError("a corrupt frame")

    monkeypatch.setattr(process.protocol, "decode", corrupt)
    events = [await parent.wait_for_completion(p) for p in (running, queued)]
    assert [e.success for e in events] == [False, False]
    assert "corrupt" in (events[0].error or "")
    assert parent.status is LlamaStatus.ERROR


# ---------------------------------------------------------------- text that has no UTF-8 form


async def test_a_lone_surrogate_is_a_value_error_at_send_time(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=1024, n_parallel=2, embeddings=True)) as parent:
        pid = parent.worker_pid
        other = parent.get_scope()
        running = await other.send_prompt("Count to ten.", max_tokens=20)
        with pytest.raises(ValueError, match=r"prompt is not valid text.*surrogate"):
            await parent.send_prompt("caf\udce9")  # what surrogateescape makes of a Latin-1 byte
        scope = parent.get_scope()
        scope.messages.append({"role": "system", "content": "be \ud800 nice"})
        with pytest.raises(ValueError, match=r"messages\[0\]\['content'\] is not valid text"):
            await scope.send_prompt("Hi")
        with pytest.raises(ValueError, match="text is not valid text"):
            await parent.get_embeddings("\ud800")
        with pytest.raises(ValueError, match=r"SamplerParams\.stop is not valid text"):
            SamplerParams(stop=("\udfff",))
        event = await parent.wait_for_completion(running)
        assert event.success
        assert event.finish_reason in ("stop", "length")
        assert parent.worker_pid == pid


# ---------------------------------------------------------------- grammars


async def test_an_unsatisfiable_grammar_fails_its_prompt_alone(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=1024, n_parallel=2)) as parent:
        pid = parent.worker_pid
        beside = await parent.get_scope().send_prompt("Count to ten.", max_tokens=20)
        never = await parent.get_scope().send_prompt("Hi", sampler_params=SamplerParams(grammar=UNSATISFIABLE))
        refused = await parent.wait_for_completion(never)
        assert not refused.success
        assert "accepts no first token" in (refused.error or "")
        assert refused.error_code == "invalid_grammar"
        assert (await parent.wait_for_completion(beside)).success
        await still_serving(parent, pid)


async def test_a_grammar_that_dead_ends_after_some_output_fails_its_prompt_alone(parent: LlamaParent) -> None:
    pid = parent.worker_pid
    dead_end = SamplerParams(greedy=True, grammar=r'root ::= "Yes" [^\x00-\U0010FFFF]')
    event = await parent.wait_for_completion(await parent.send_prompt("Hi", sampler_params=dead_end))
    assert not event.success
    assert "grammar allows no token" in (event.error or "")
    assert event.error_code == "invalid_grammar"
    await still_serving(parent, pid)


# ---------------------------------------------------------------- images


async def test_a_prompt_ending_with_the_image_marker_is_refused_on_a_model_without_template(
    tiny_vlm: tuple[Path, Path],
) -> None:
    async with LlamaParent(vlm_load(tiny_vlm)) as parent:
        pid = parent.worker_pid
        with pytest.raises(ValueError, match="must not end with an image"):
            await parent.send_prompt_with_images(f"Look: {MEDIA_MARKER}", [RED])
        scope = parent.get_scope()  # the same, reached by editing the history instead
        scope.messages.append({"role": "user", "content": f"Look: {MEDIA_MARKER}", "images": (RED,)})
        event = await parent.wait_for_completion(await scope.send_prompt(""))
        assert not event.success
        assert "ends with an image" in (event.error or "")
        assert parent.worker_pid == pid
        answer = await parent.wait_for_completion(await parent.send_prompt_with_images("What is it?", [RED]))
        assert answer.success


async def test_an_image_too_large_is_refused_before_it_is_decoded(tiny_vlm: tuple[Path, Path]) -> None:
    huge = LlamaImage.from_bytes(png_header(20000, 20000), name="huge.png")
    assert (huge.width, huge.height) == (20000, 20000)
    async with LlamaParent(vlm_load(tiny_vlm)) as parent:
        with pytest.raises(ValueError, match=r"huge.png.*20000x20000.*max_image_pixels"):
            await parent.send_prompt_with_images("What is it?", [huge])
        assert parent.queue_length == 0


async def test_an_image_is_decoded_off_the_step_so_others_generate_and_stop_is_quick(
    tiny_vlm: tuple[Path, Path],
) -> None:
    big = LlamaImage.from_bytes(png_header(10000, 10000, rows=10000), name="big.png")
    async with LlamaParent(vlm_load(tiny_vlm, n_parallel=2, max_image_pixels=10**9)) as parent:
        looking, talking = parent.get_scope(), parent.get_scope()
        await looking.send_prompt_with_images("What is it?", [big], max_tokens=4)
        sent = time.perf_counter()
        chat = await parent.wait_for_completion(await talking.send_prompt("Hello there", max_tokens=8))
        chatted = time.perf_counter() - sent
        stop_sent = time.perf_counter()
        await looking.stop()
        stopped = time.perf_counter() - stop_sent
        assert chat.success
        assert chatted < 0.5, f"the other conversation waited {chatted:.2f} s for the image"
        assert stopped < 0.5, f"stop() took {stopped:.2f} s"
        assert (await parent.wait_for_completion(await talking.send_prompt("More", max_tokens=4))).success


async def test_a_conversation_of_thousands_of_messages_is_fitted_without_stalling_the_others(model_path: Path) -> None:
    # Cutting old turns one at a time re-rendered the whole conversation per
    # turn: minutes of work in the engine's thread for 2000 short messages,
    # during which no other prompt advanced and a stop could not land.
    async with LlamaParent(greedy_load(model_path, n_ctx=512, n_parallel=2)) as parent:
        crowded = parent.get_scope()
        crowded.messages[:] = [{"role": ("user", "assistant")[i % 2], "content": f"m{i}"} for i in range(2000)]
        neighbour = parent.get_scope()
        ids = [await crowded.send_prompt("last", max_tokens=2), await neighbour.send_prompt("Hi", max_tokens=2)]
        events = await asyncio.wait_for(asyncio.gather(*(parent.wait_for_completion(i) for i in ids)), 30)
    assert all(e.success for e in events)
    assert events[0].dropped_turns > 1900


# ---------------------------------------------------------------- cheap refusals: bounds before tokenizing


async def test_a_message_of_megabytes_is_refused_by_its_size_and_the_neighbour_carries_on(model_path: Path) -> None:
    # It was tokenized whole first: an 8 MiB message took 9.5 s to refuse and held the others meanwhile.
    async with LlamaParent(greedy_load(model_path, n_ctx=512, n_parallel=2)) as parent:
        pid = parent.worker_pid
        text = "word " * (8 * 2**20 // 5)
        huge = await parent.get_scope().send_prompt(text, max_tokens=4)
        neighbour = await parent.get_scope().send_prompt("Hi", max_tokens=3)
        bad, good = await asyncio.wait_for(
            asyncio.gather(parent.wait_for_completion(huge), parent.wait_for_completion(neighbour)), 60
        )
        assert bad.error_code == "context_length_exceeded"
        assert f"{len(text)} bytes of text" in (bad.error or ""), bad.error  # told by its size: nothing was tokenized
        assert "--ctx" in (bad.error or "")
        assert good.success, good.error
        await still_serving(parent, pid)


async def test_200000_messages_are_cut_to_the_most_read_or_refused_when_they_may_not_be(model_path: Path) -> None:
    # 200,000 tiny messages kept the worker busy for 13 minutes after their client left.
    crowd = [{"role": ("user", "assistant")[i % 2], "content": f"m{i}"} for i in range(200_000)]
    async with LlamaParent(greedy_load(model_path, n_ctx=512, n_parallel=2)) as parent:
        trimmed, strict, neighbour = parent.get_scope(), parent.get_scope(), parent.get_scope()
        trimmed.messages[:] = crowd
        strict.messages[:] = crowd
        strict.trim_history = False
        ids = [
            await trimmed.send_prompt("last", max_tokens=2),
            await strict.send_prompt("last", max_tokens=2),
            await neighbour.send_prompt("Hi", max_tokens=2),
        ]
        cut, refused, other = await asyncio.wait_for(asyncio.gather(*map(parent.wait_for_completion, ids)), 120)
    assert cut.success, cut.error
    assert cut.dropped_turns >= 200_000 - 4096
    assert refused.error_code == "context_length_exceeded"
    assert "200001 messages" in (refused.error or "") and "LlamaLoad.max_messages" in (refused.error or "")
    assert other.success


async def test_max_messages_is_a_load_setting(model_path: Path) -> None:
    load = dataclasses.replace(greedy_load(model_path, n_ctx=512), max_messages=3)
    async with LlamaParent(load) as parent:
        scope = parent.get_scope()
        scope.trim_history = False
        scope.messages[:] = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2
        event = await parent.wait_for_completion(await scope.send_prompt("c", max_tokens=2))
        assert event.error_code == "context_length_exceeded"
        assert "5 messages" in (event.error or "") and "at most 3" in (event.error or "")
        scope.trim_history = True
        event = await parent.wait_for_completion(await scope.send_prompt("c", max_tokens=2))
        assert event.success and event.dropped_turns >= 2


async def test_a_long_conversation_is_refused_unless_it_may_lose_turns(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=256)) as parent:
        strict = parent.get_scope()
        assert strict.trim_history is True  # the library's default
        strict.trim_history = False
        history = []
        for i in range(12):
            history += [{"role": "user", "content": f"Fact {i}: box {i} holds {i * 7} blue marbles."}]
            history += [{"role": "assistant", "content": "Noted."}]
        strict.messages[:] = history
        refused = await parent.wait_for_completion(await strict.send_prompt("How many in box 3?", max_tokens=8))
        assert refused.error_code == "context_length_exceeded"
        assert "trim_history" in (refused.error or "")
        assert strict.messages == history  # a refused prompt leaves no turn behind
        strict.trim_history = True
        answered = await parent.wait_for_completion(await strict.send_prompt("How many in box 3?", max_tokens=8))
        assert answered.success and answered.dropped_turns > 0
        with pytest.raises(TypeError, match="trim_history must be a bool"):
            strict.trim_history = "no"  # type: ignore[assignment]
            await strict.send_prompt("x")


async def test_a_raw_prompt_dense_with_special_tokens_is_refused_before_it_is_tokenized(model_path: Path) -> None:
    # llama.cpp's search for special tokens is quadratic: 32,768 of them between words took 15 s.
    async with LlamaParent(greedy_load(model_path, n_ctx=2048)) as parent:
        pid = parent.worker_pid
        event = await parent.wait_for_completion(await parent.send_prompt("<|im_end|>a" * 3000, raw=True, max_tokens=2))
        assert event.error_code == "context_length_exceeded"
        assert "more than 2048 special tokens' texts" in (event.error or ""), event.error
        # In a chat message the same text is only text: it is tokenized as such, and fits.
        fine = await parent.wait_for_completion(await parent.get_scope().send_prompt("<|im_end|>" * 20, max_tokens=2))
        assert fine.success, fine.error
        await still_serving(parent, pid)


async def test_images_whose_pixels_add_up_past_the_bound_are_refused_before_any_is_decoded(
    tiny_vlm: tuple[Path, Path],
) -> None:
    # 33 all-zero 8192x4096 PNGs took the worker to 3.3 GiB for 45 s before their 400.
    big = LlamaImage.from_bytes(png_header(8192, 4096, rows=1), name="big.png")
    load = dataclasses.replace(vlm_load(tiny_vlm), max_prompt_pixels=3 * 8192 * 4096)
    async with LlamaParent(load) as parent:
        pid = parent.worker_pid
        before = psutil.Process(pid).memory_info().rss if pid else 0
        event = await parent.wait_for_completion(await parent.send_prompt_with_images("Look", [big] * 4))
        assert not event.success
        assert "max_prompt_pixels" in (event.error or "") and "nothing was decoded" in (event.error or "")
        assert psutil.Process(pid).memory_info().rss - before < 64 * 2**20 if pid else True
        await still_serving(parent, pid)


async def test_an_engine_that_answers_pings_but_makes_no_progress_is_declared_stuck() -> None:
    # The reader thread answers liveness pings, so an engine stuck in one call was never noticed.
    # The rule, with the clock in hand: progress unchanged for STALL_FACTOR liveness timeouts while there
    # is work means the worker is killed; any progress, or being idle, starts the count again.
    killed: list[str] = []
    link = WorkerLink(
        greedy_load(Path("unused.gguf")),
        on_started=lambda _: None,
        on_tokens=lambda _: None,
        on_finished=lambda _: None,
        on_fault=lambda *_: None,
        on_exit=lambda _: None,
        has_work=lambda: True,
        liveness_timeout=1.0,
    )
    link.kill = lambda because=None: killed.append(because or "")  # type: ignore[method-assign]
    clock = [100.0]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "monotonic", lambda: clock[0])
        for progress, at in [(1, 0.0), (2, 1.0), (2, 4.0), (3, 6.5), (3, 12.0)]:
            clock[0] = 100.0 + at
            link._pong(protocol.Pong(0, progress=progress))
        assert killed == []  # progress came at 6.5 s: 5.5 s without, under 6
        clock[0] = 113.5
        link._pong(protocol.Pong(0, progress=3))
    assert len(killed) == 1
    assert "made no progress for 7 s" in killed[0] and "liveness_timeout" in killed[0]
