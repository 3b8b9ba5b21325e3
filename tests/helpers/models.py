"""Loads of the test models, and how the tests watch them: greedy loads, the first token, the worker processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil

from llama_isolate import ContextParams, EventStream, LlamaLoad, LlamaParent, SamplerParams, Speculative

GREEDY = SamplerParams(greedy=True)


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
    """Greedy sampling with flash attention off, so that two runs compare token for token whatever else runs.

    Without flash attention each of llama.cpp's sums is computed by one thread in one order, so the bits do not
    depend on the thread count, and the threads may adapt to a busy machine (docs/parallel.md). A fixed count
    would not do: two threads beside two busy processes made every decode tens of times slower.
    """
    params = ContextParams(**{"flash_attention": "off", **context})  # type: ignore[arg-type]
    return LlamaLoad(path=path, context_params=params, sampler_params=GREEDY)


def one_thread_load(
    path: Path, speculative: Speculative | None = None, *, sampler: SamplerParams = GREEDY, **context: object
) -> LlamaLoad:
    """Flash attention on and one thread: llama.cpp then computes a row of a several-token batch with the bits of
    the same token decoded alone, so speculative decoding's checks give the very text a load without it gives.

    (Flash attention off computes a batch's attention with other kernels, 0.3-0.7 apart in the logits here; on,
    with two threads, a lone token's attention over 512 cells or more is split between the threads and summed in
    another order. docs/speculative.md.)
    """
    fixed = {"flash_attention": "on", "n_threads": 1, "n_threads_batch": 1, "adapt_threads": False}
    params = ContextParams(**{**fixed, **context})  # type: ignore[arg-type]
    return LlamaLoad(path=path, context_params=params, sampler_params=sampler, speculative=speculative)


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
