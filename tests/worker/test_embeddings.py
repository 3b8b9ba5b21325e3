"""Embeddings on the real default model."""

from __future__ import annotations

import asyncio
import math

import pytest

from llama_isolate import LlamaContextLengthExceeded, LlamaFeatureNotEnabled, LlamaParent, LlamaRequestError


async def test_embedding_has_the_model_width_and_is_deterministic(embedding_parent: LlamaParent) -> None:
    first = await embedding_parent.get_embeddings("The cat sat on the mat.")
    second = await embedding_parent.get_embeddings("The cat sat on the mat.")
    other = await embedding_parent.get_embeddings("Quarterly revenue grew by four percent.")
    assert len(first) == 576
    assert embedding_parent.model_info is not None
    assert embedding_parent.model_info.n_embd == 576
    assert all(isinstance(v, float) and math.isfinite(v) for v in first)
    assert first == second
    assert first != other


async def test_normalized_embedding_has_unit_length(embedding_parent: LlamaParent) -> None:
    raw = await embedding_parent.get_embeddings("hello")
    unit = await embedding_parent.get_embeddings("hello", normalize=True)
    assert math.isclose(math.sqrt(sum(v * v for v in unit)), 1.0, rel_tol=1e-5)
    scale = math.sqrt(sum(v * v for v in raw))
    assert all(math.isclose(u * scale, r, rel_tol=1e-4, abs_tol=1e-6) for u, r in zip(unit, raw, strict=True))


async def test_embeddings_while_a_prompt_generates_do_not_disturb_it(embedding_parent: LlamaParent) -> None:
    alone_id = await embedding_parent.send_prompt("List three animals.", max_tokens=20)
    alone = await embedding_parent.wait_for_completion(alone_id)
    embedding_parent.messages.clear()
    pid = await embedding_parent.send_prompt("List three animals.", max_tokens=20)
    vectors = await asyncio.gather(*(embedding_parent.get_embeddings(f"text {i}") for i in range(5)))
    event = await embedding_parent.wait_for_completion(pid)
    assert all(len(v) == 576 for v in vectors)
    assert event.text == alone.text  # greedy: same text with embeddings computed in between


async def test_empty_and_too_long_texts_are_request_errors(embedding_parent: LlamaParent) -> None:
    with pytest.raises(LlamaRequestError, match="empty"):
        await embedding_parent.get_embeddings("")
    with pytest.raises(LlamaContextLengthExceeded, match="tokens"):  # a LlamaRequestError
        await embedding_parent.get_embeddings("word " * 3000)
    assert len(await embedding_parent.get_embeddings("still fine")) == 576


async def test_a_text_of_megabytes_is_refused_by_its_size_before_it_is_tokenized(embedding_parent: LlamaParent) -> None:
    text = "word " * (8 * 2**20 // 5)
    with pytest.raises(LlamaContextLengthExceeded, match=f"the text is {len(text)} bytes"):
        await embedding_parent.get_embeddings(text)
    assert len(await embedding_parent.get_embeddings("still fine")) == 576


async def test_embeddings_are_refused_without_embeddings_enabled(parent: LlamaParent) -> None:
    with pytest.raises(LlamaFeatureNotEnabled, match="embeddings=True"):
        await parent.get_embeddings("hello")


async def test_embed_gives_the_vector_and_the_tokens_the_text_took(embedding_parent: LlamaParent) -> None:
    short = await embedding_parent.embed("cat", normalize=True)
    longer = await embedding_parent.embed("a cat sat on the mat and looked at the dog", normalize=True)
    assert short.vector == await embedding_parent.get_embeddings("cat", normalize=True)
    assert 1 <= short.tokens < longer.tokens
    assert longer.tokens >= 10
