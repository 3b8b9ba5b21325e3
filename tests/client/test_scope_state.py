"""save_state / load_state / clear: a conversation and its KV cache as bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_isolate import LlamaParent, LlamaStateError, LlamaStatusError

from ..helpers.models import greedy_load


async def turn(parent: LlamaParent, scope: object, prompt: str) -> object:
    return await parent.wait_for_completion(await scope.send_prompt(prompt, max_tokens=12))  # type: ignore[attr-defined]


async def test_save_and_load_continue_the_conversation_in_another_parent(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=1024)) as first:
        original = first.get_scope()
        one = await turn(first, original, "My name is Ada and I like chess.")
        data = await original.save_state()
        expected = await turn(first, original, "What do I like?")  # how the original goes on
    async with LlamaParent(greedy_load(model_path, n_ctx=1024)) as second:
        restored = second.get_scope()
        await restored.load_state(data)
        assert restored.messages == original.messages[:2]
        again = await turn(second, restored, "What do I like?")
    assert again.text == expected.text  # type: ignore[attr-defined]
    assert again.cached_tokens >= one.prompt_tokens  # type: ignore[attr-defined]
    assert again.prompt_tokens < 25  # type: ignore[attr-defined]


async def test_a_state_from_another_model_is_refused(model_path: Path, gemma_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=1024)) as smol:
        scope = smol.get_scope()
        await turn(smol, scope, "Hello")
        data = await scope.save_state()
    async with LlamaParent(greedy_load(gemma_path, n_ctx=1024)) as gemma:
        other = gemma.get_scope()
        with pytest.raises(LlamaStateError, match="saved with model"):
            await other.load_state(data)
        assert other.messages == []
        with pytest.raises(LlamaStateError, match="not a llama_isolate scope state"):
            await other.load_state(b"random bytes")
        with pytest.raises(LlamaStateError, match="damaged"):
            await other.load_state(data[:40])


async def test_a_state_whose_kv_bytes_are_corrupt_is_refused_by_llama_cpp(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=1024)) as parent:
        scope = parent.get_scope()
        await turn(parent, scope, "Hello")
        data = await scope.save_state()
        fresh = parent.get_scope()
        with pytest.raises(LlamaStateError, match="truncated"):
            await fresh.load_state(data[:-200])
        kv = data.index(b"LIS1")  # the portable KV state: header, part size, stream count, then its cell count
        corrupt = data[: kv + 20] + (2**30).to_bytes(4, "little") + data[kv + 24 :]
        with pytest.raises(LlamaStateError, match="refused"):
            await fresh.load_state(corrupt)
        assert fresh.messages == []
        assert (await turn(parent, fresh, "Still fine?")).success  # type: ignore[attr-defined]


async def test_state_calls_need_an_idle_scope(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=1024)) as parent:
        scope = parent.get_scope()
        await scope.send_prompt("Write a long story.", max_tokens=200)
        with pytest.raises(LlamaStatusError, match="idle"):
            await scope.save_state()
        await scope.stop()
        assert await scope.save_state()


async def test_clear_forgets_the_conversation_and_its_cache(model_path: Path) -> None:
    async with LlamaParent(greedy_load(model_path, n_ctx=1024)) as parent:
        scope = parent.get_scope()
        first = await turn(parent, scope, "My name is Ada.")
        await scope.clear()
        assert scope.messages == []
        after = await turn(parent, scope, "My name is Ada.")
    # The model sees a new conversation: the same prompt as the first turn, not
    # the history. Its tokens are found in the orphaned cache (any conversation
    # that starts the same way would find them), all but the last one.
    size = first.prompt_tokens + first.cached_tokens  # type: ignore[attr-defined]
    assert after.prompt_tokens + after.cached_tokens == size  # type: ignore[attr-defined]
    assert after.cached_tokens == size - 1  # type: ignore[attr-defined]
