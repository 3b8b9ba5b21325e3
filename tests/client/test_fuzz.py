"""Generated hostile input thrown at one live parent: the worker keeps serving, every prompt ends once.

Hypothesis generates conversations (malformed entries, surrogates, NULs,
image markers), prompts, images (real, garbage, absurdly large), sampling
parameters and grammars, and sends them through the public API of one parent
on the tiny vision model. A call may refuse its input with a `ValueError`,
`TypeError` or `LlamaError` naming what was wrong; anything else is a bug.
After every case:

- each prompt that was accepted got exactly one completion event;
- the worker's pid is unchanged (nothing killed it);
- the parent still answers a plain prompt.

The server's side of this, generated HTTP requests, is tests/server/test_fuzz_http.py.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_isolate import (
    ContextParams,
    LlamaError,
    LlamaImage,
    LlamaLoad,
    LlamaParent,
    LlamaScope,
    LlamaStatus,
    SamplerParams,
)

from ..helpers.fuzz import TEMPLATE, ForeignFloat, nasty, texts
from ..helpers.models import GREEDY
from ..helpers.pictures import BLUE, RED, png_header

WAIT_S = 30.0

roles = st.one_of(st.sampled_from(["user", "assistant", "system", "tool", ""]), texts, st.integers(), st.none())
images = st.one_of(
    st.just(RED),
    st.just(BLUE),
    st.just(LlamaImage.from_bytes(b"\x89PNG but not really", name="broken.png")),
    st.just(LlamaImage.from_bytes(png_header(20000, 20000), name="huge.png")),
    st.just(LlamaImage.from_bytes(b"GIF89a" + bytes(20), name="tiny.gif")),
)
image_lists = st.one_of(
    st.lists(images, max_size=2), st.just("not images"), st.lists(st.binary(max_size=4), max_size=1)
)
messages = st.one_of(
    st.fixed_dictionaries({"role": roles, "content": texts}, optional={"images": image_lists}),
    st.dictionaries(st.sampled_from(["role", "content", "images", "name"]), texts, max_size=3),
    st.text(max_size=5),
    st.none(),
)
grammars = st.one_of(
    st.none(),
    st.sampled_from(
        [
            r'root ::= "yes" | "no"',
            r"root ::= [^\x00-\U0010FFFF]",
            r'root ::= "a" [^\x00-\U0010FFFF]',
            r"root ::= root",
            r"root ::= x",
            r'root ::= ("ab")*',
            r'root ::= "',
            "root ::= [",
        ]
    ),
    texts.filter(lambda g: g.strip() != ""),
)


samplers = st.none() | st.fixed_dictionaries(
    {
        "greedy": st.just(True),
        "grammar": grammars,
        "stop": st.lists(st.one_of(st.text(min_size=1, max_size=4), nasty, texts.filter(bool)), max_size=2).map(tuple),
        "repeat_penalty": st.sampled_from([1.0, 1.3, ForeignFloat(1.1)]),  # a float of the caller's own class
    }
)


Action = tuple[str, Any]
actions = st.one_of(
    st.tuples(st.just("prompt"), st.tuples(texts, samplers, st.one_of(st.integers(-2, 6), st.none(), st.booleans()))),
    st.tuples(st.just("images"), st.tuples(texts, st.lists(images, min_size=1, max_size=2))),
    st.tuples(st.just("history"), st.lists(messages, min_size=1, max_size=3)),
    st.tuples(st.just("embed"), texts),
    st.tuples(st.just("stop"), st.none()),
    st.tuples(st.just("trim"), st.one_of(st.booleans(), texts)),
    # many messages, or a text of megabytes: refused by their counts and sizes before they are tokenized
    st.tuples(st.just("crowd"), st.integers(4000, 6000)),
    st.tuples(st.just("prompt"), st.tuples(st.just("word " * 300_000), samplers, st.just(2))),
)


@pytest.fixture(scope="module", params=[None, TEMPLATE], ids=["no template", "a template"])
def live(
    tiny_vlm: tuple[Path, Path], request: pytest.FixtureRequest
) -> Iterator[tuple[asyncio.AbstractEventLoop, LlamaParent]]:
    """One parent for every example, on a loop of its own (hypothesis calls the test many times)."""
    model, mmproj = tiny_vlm
    load = LlamaLoad(
        path=model,
        mmproj_path=mmproj,
        sampler_params=GREEDY,
        context_params=ContextParams(n_ctx=512, n_parallel=2, embeddings=True),
        chat_template=request.param,
    )
    loop = asyncio.new_event_loop()
    parent = LlamaParent(load)
    loop.run_until_complete(parent.init())
    try:
        yield loop, parent
    finally:
        loop.run_until_complete(parent.dispose())
        loop.close()


async def play(parent: LlamaParent, scope: LlamaScope, action: Action) -> str | None:
    """Carry out one action; the prompt id it started, if any. Refusals must be typed."""
    kind, arg = action
    try:
        if kind == "prompt":
            text, sampler, max_tokens = arg
            params = None if sampler is None else SamplerParams(**sampler)
            return await scope.send_prompt(text, sampler_params=params, max_tokens=max_tokens or 4)
        if kind == "images":
            text, pictures = arg
            return await scope.send_prompt_with_images(text, pictures, max_tokens=4)
        if kind == "history":
            scope.messages.extend(arg)
        elif kind == "embed":
            await parent.get_embeddings(arg)
        elif kind == "stop":
            await scope.stop()
        elif kind == "trim":
            scope.trim_history = arg
        elif kind == "crowd":
            scope.messages.extend({"role": ("user", "assistant")[i % 2], "content": "m"} for i in range(arg))
    except (ValueError, TypeError, LlamaError):
        pass
    return None


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(actions, min_size=1, max_size=5))
def test_no_input_kills_the_worker_or_loses_a_prompt(
    live: tuple[asyncio.AbstractEventLoop, LlamaParent], script: list[Action]
) -> None:
    loop, parent = live

    async def case() -> None:
        pid = parent.worker_pid
        events: collections.Counter[str] = collections.Counter()
        subscription = parent.completions.listen(lambda event: events.update([event.prompt_id]))
        scope = parent.get_scope()
        started = [p for action in script if (p := await play(parent, scope, action)) is not None]
        for prompt_id in started:
            await asyncio.wait_for(parent.wait_for_completion(prompt_id), WAIT_S)
        subscription.cancel()
        assert {p: events[p] for p in started} == dict.fromkeys(started, 1)
        assert parent.worker_pid == pid
        await scope.dispose()
        check = await asyncio.wait_for(parent.wait_for_completion(await parent.send_prompt("Hi", max_tokens=2)), WAIT_S)
        assert check.success, check.error
        assert parent.status is LlamaStatus.READY

    loop.run_until_complete(case())
