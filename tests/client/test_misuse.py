"""Misuse and rough handling of the library: each gets a clear error, and nothing leaks or hangs."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import pytest

from llama_isolate import (
    MEDIA_MARKER,
    CompletionEvent,
    ContextParams,
    LlamaLoad,
    LlamaParent,
    LlamaStateError,
    LlamaStatus,
    LlamaStatusError,
    SamplerParams,
    SyncLlamaParent,
)
from llama_isolate.testing import make_tiny_model

from ..helpers.models import children, first_token, greedy_load, vlm_load
from ..helpers.pictures import RED


def test_a_parent_used_from_a_second_event_loop_says_which_loop_it_belongs_to(model_path: Path) -> None:
    home = asyncio.new_event_loop()
    parent = LlamaParent(greedy_load(model_path, n_ctx=512))
    home.run_until_complete(parent.init())

    async def from_another_loop() -> None:
        with pytest.raises(LlamaStatusError, match="another event loop"):
            await parent.send_prompt("Hi")
        with pytest.raises(LlamaStatusError, match="belongs to the loop that ran init"):
            await parent.wait_for_completion("x")

    try:
        asyncio.run(from_another_loop())
        event = home.run_until_complete(_one_turn(parent))  # its own loop still works
        assert event.success
    finally:
        home.run_until_complete(parent.dispose())
        home.close()


async def _one_turn(parent: LlamaParent) -> CompletionEvent:
    return await parent.wait_for_completion(await parent.send_prompt("Hi", max_tokens=3))


def test_a_disposed_sync_parent_raises_status_errors_and_leaves_no_warnings(model_path: Path) -> None:
    gc.collect()  # what earlier tests left (once: two unclosed pipes of another test's process) is not this parent's
    parent = SyncLlamaParent(greedy_load(model_path, n_ctx=512))
    parent.init()
    parent.dispose()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in (lambda: parent.send_prompt("Hi"), parent.stop, parent.get_scope, parent.init):
            with pytest.raises(LlamaStatusError, match="disposed"):
                call()
        gc.collect()
    assert [str(w.message) for w in caught] == []
    parent.dispose()  # still idempotent


def test_a_sync_parent_whose_init_fails_inside_with_ends_its_thread(tmp_path: Path) -> None:
    missing = LlamaLoad(path=tmp_path / "missing.gguf")

    def ours() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("llama-isolate-")}

    before = ours()  # other tests' parents may still be up
    for _ in range(20):
        with pytest.raises(Exception, match="not found"), SyncLlamaParent(missing):
            pass
        # The parent's loop thread is joined before `with` ends; the threads that watch each worker end with it,
        # moments later on a busy machine (they are daemons, and must not pile up either).
        assert not [t for t in ours() - before if t.name == "llama-isolate-loop"]
    deadline = time.monotonic() + 30
    while ours() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [t.name for t in ours() - before] == []


def test_breaking_out_of_a_sync_stream_leaves_no_handler_behind(model_path: Path) -> None:
    with SyncLlamaParent(greedy_load(model_path, n_ctx=512)) as parent:
        stream = parent.parent.stream
        for _ in range(5):
            pid = parent.send_prompt("Count to five.", max_tokens=8)
            for _token in parent.stream:
                break
            parent.wait_for_completion(pid)
        gc.collect()
        assert stream._callbacks == {}
        assert stream._closers == {}


async def saved_turn(load: LlamaLoad, prompt: str = "My name is Ada.") -> tuple[bytes, str]:
    async with LlamaParent(load) as parent:
        scope = parent.get_scope()
        event = await parent.wait_for_completion(await scope.send_prompt(prompt, max_tokens=6))
        assert event.success, event.error
        return await scope.save_state(), event.text


@pytest.mark.parametrize("context", [{"n_parallel": 2}, {"n_parallel": 3}, {"embeddings": True}])
async def test_a_state_moves_between_parents_whatever_their_slot_count(model_path: Path, context: dict) -> None:
    data, _ = await saved_turn(greedy_load(model_path, n_ctx=1024))
    async with LlamaParent(greedy_load(model_path, n_ctx=1024, **context)) as parent:
        scope = parent.get_scope()
        await scope.load_state(data)
        event = await parent.wait_for_completion(await scope.send_prompt("What is my name?", max_tokens=4))
    assert event.success, event.error
    assert event.cached_tokens > 10  # the first turn came from the loaded KV cache


async def test_a_sliding_window_models_state_moves_too(gemma_path: Path) -> None:
    data, _ = await saved_turn(greedy_load(gemma_path, n_ctx=1024, n_parallel=2))
    async with LlamaParent(greedy_load(gemma_path, n_ctx=1024)) as parent:
        scope = parent.get_scope()
        await scope.load_state(data)
        event = await parent.wait_for_completion(await scope.send_prompt(" And then", max_tokens=4))
    assert event.success, event.error
    assert event.cached_tokens > 5


async def test_a_state_is_refused_only_for_what_really_differs_and_says_what(model_path: Path) -> None:
    data, _ = await saved_turn(greedy_load(model_path, n_ctx=1024))
    other_cache = LlamaLoad(path=model_path, context_params=ContextParams(n_ctx=1024, type_k="q8_0"))
    async with LlamaParent(other_cache) as parent:
        with pytest.raises(LlamaStateError, match="KV cache k=f16,v=f16, not k=q8_0,v=f16"):
            await parent.get_scope().load_state(data)
    long, _ = await saved_turn(greedy_load(model_path, n_ctx=1024), "Remember these words: " + "blue sky " * 40)
    async with LlamaParent(greedy_load(model_path, n_ctx=64)) as parent:
        with pytest.raises(LlamaStateError, match=r"more than this parent's context of 64"):
            await parent.get_scope().load_state(long)


async def test_a_text_turn_that_mentions_the_marker_is_text_and_images_still_work(tiny_vlm: tuple[Path, Path]) -> None:
    async with LlamaParent(vlm_load(tiny_vlm)) as parent:
        scope = parent.get_scope()
        mention = await parent.wait_for_completion(
            await scope.send_prompt(f"What does {MEDIA_MARKER} mean?", max_tokens=4)
        )
        assert mention.success, mention.error
        picture = await parent.wait_for_completion(
            await scope.send_prompt_with_images("And this one?", [RED], max_tokens=4)
        )
        assert picture.success, picture.error
        assert picture.prompt_tokens > 16  # the image's positions were decoded


async def test_listen_refuses_what_it_cannot_call(parent: LlamaParent) -> None:
    async def coroutine_function(_: str) -> None:
        pass

    with pytest.raises(TypeError, match="callable"):
        parent.stream.listen(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async for"):
        parent.stream.listen(coroutine_function)


async def test_a_bool_is_not_a_token_count(parent: LlamaParent) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        await parent.send_prompt("Hi", max_tokens=True)


def test_make_tiny_model_creates_its_folder(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "a" / "b")
    assert path.is_file()


async def test_a_stopped_worker_is_declared_dead_and_restarted(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=512), restart_on_crash=True, liveness_timeout=1.0) as parent:
        frozen = parent.worker_pid
        assert frozen is not None
        running = await parent.send_prompt("Write a long story.", max_tokens=300)
        await first_token(parent)
        os.kill(frozen, signal.SIGSTOP)
        queued = await parent.send_prompt("Hi", max_tokens=3)
        started = time.monotonic()
        event = await parent.wait_for_completion(running)
        assert time.monotonic() - started < 5
        assert not event.success
        assert "liveness ping" in (event.error or "")
        after = await parent.wait_for_completion(queued)
        assert after.success, after.error
        assert parent.worker_pid not in (None, frozen)
        assert parent.status is LlamaStatus.READY
    assert not children()


async def test_stop_on_a_stopped_worker_returns(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=512), liveness_timeout=1.0) as parent:
        running = await parent.send_prompt("Write a long story.", max_tokens=300)
        await first_token(parent)
        assert parent.worker_pid is not None
        os.kill(parent.worker_pid, signal.SIGSTOP)
        await asyncio.wait_for(parent.stop(), timeout=5)
        event = await parent.wait_for_completion(running)
        assert not event.success
        assert parent.status is LlamaStatus.ERROR
        assert "did not answer a liveness ping within 1 s" in (parent.error or "")
    assert not children()


def test_sampler_params_refuse_nul_in_c_strings() -> None:
    with pytest.raises(ValueError, match="grammar must not contain NUL"):
        SamplerParams(grammar='root ::= "a"\x00')
