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

The same goes for generated HTTP requests to the server (JSON of any shape,
malformed messages and content parts, bad images, out-of-range options,
bytes that are not JSON): each gets a 200 or a 400 with OpenAI's error
object, never a 5xx, and the server keeps serving with nothing left running.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_isolate import (
    MEDIA_MARKER,
    ContextParams,
    LlamaError,
    LlamaImage,
    LlamaLoad,
    LlamaParent,
    LlamaScope,
    LlamaStatus,
    SamplerParams,
)
from llama_isolate.server import create_app

from ..helpers.models import GREEDY
from ..helpers.pictures import BLUE, RED, png_header
from ..helpers.server_tools import metric, wait_until
from ..helpers.serving import serving

WAIT_S = 30.0

# Text that has tripped C code before: lone surrogates, NULs, the image marker, a stray BOS, long runs.
nasty = st.sampled_from(["\ud800", "\udfff", "\x00", MEDIA_MARKER, "<s>", "</s>", "\u202e", "🦙", "\r\n", "a" * 300])
texts = st.lists(st.one_of(st.text(max_size=20), nasty), max_size=6).map("".join)
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
        "stop": st.lists(st.one_of(st.text(min_size=1, max_size=4), nasty), max_size=2).map(tuple),
        "repeat_penalty": st.sampled_from([1.0, 1.3]),
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


# A chat template that refuses a role, as some models' templates do, to reach the template's failures too.
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tool turns') }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
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


# ---------------------------------------------------------------------------------------------- over HTTP

RED_URI = "data:image/png;base64," + base64.b64encode(RED.data).decode()
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
http_texts = st.one_of(
    # "\ud800": a lone surrogate, which JSON can spell and Python keeps (once a plain-text 500 in a schema's keys)
    st.text(max_size=20),
    st.sampled_from(["", "<s>", "</s>", "\x00", "🦙", MEDIA_MARKER, "a" * 300, "\ud800"]),
)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(http_texts, json_values)}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.one_of(
                st.fixed_dictionaries(
                    {"url": st.sampled_from([RED_URI, "data:image/png;base64,!!!", "http://x/y.png", "data:,"])}
                ),
                json_values,
            ),
        }
    ),
    json_values,
)
# An assistant's calls, as a client echoes them back (arguments are JSON text, or anything else).
tool_calls = st.lists(
    st.fixed_dictionaries(
        {
            "id": http_texts,
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {"name": http_texts, "arguments": st.one_of(json_values.map(json.dumps), http_texts, json_values)}
            ),
        }
    ),
    max_size=2,
)
http_messages = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "role": st.one_of(st.sampled_from(["user", "assistant", "system", "developer", "tool"]), json_values),
                "content": st.one_of(http_texts, st.lists(parts, max_size=3), st.none(), json_values),
            },
            optional={
                "tool_calls": st.one_of(tool_calls, json_values),
                "tool_call_id": st.one_of(http_texts, json_values),
            },
        ),
        json_values,
    ),
    max_size=4,
)
# What JSON schemas, patterns, logit biases and tools a client may send.
pattern_texts = st.text(alphabet='^$[]{}()|*+?.\\ad-,019"', max_size=12)
schemas = st.recursive(
    st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "object", "array", "boolean", "x"])}),
        st.fixed_dictionaries({"type": st.just("string"), "pattern": pattern_texts}),
        st.fixed_dictionaries({"enum": st.lists(json_values, max_size=3)}),
        st.fixed_dictionaries({"const": json_values}),
        json_values,
    ),
    lambda inner: st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(http_texts, inner, max_size=3)},
            optional={"required": st.lists(http_texts, max_size=2), "additionalProperties": st.booleans()},
        ),
        st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=2)}),
        st.fixed_dictionaries({"type": st.just("array"), "items": inner}, optional={"maxItems": st.integers(-1, 3)}),
        st.fixed_dictionaries(
            {"$defs": st.fixed_dictionaries({"A": inner}), "$ref": st.sampled_from(["#/$defs/A", "#/x"])}
        ),
    ),
    max_leaves=4,
)
tools = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": http_texts}, optional={"parameters": schemas}),
        }
    ),
    max_size=2,
)
token_ids = st.one_of(st.lists(st.integers(-1, 70000), max_size=4), st.lists(st.lists(st.integers(0, 99)), max_size=2))
options = {
    "response_format": st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("json_schema"), "json_schema": st.fixed_dictionaries({"schema": schemas})}
        ),
        st.fixed_dictionaries({"type": st.sampled_from(["json_object", "text", "xml"])}),
        json_values,
    ),
    "logit_bias": st.one_of(
        st.dictionaries(st.one_of(st.integers(-5, 10**6).map(str), http_texts), st.floats(-200, 200), max_size=4),
        json_values,
    ),
    "logprobs": st.one_of(st.booleans(), st.integers(-1, 7), json_values),
    "top_logprobs": st.one_of(st.integers(-1, 25), json_values),
    "tools": st.one_of(tools, json_values),
    "tool_choice": st.one_of(
        st.sampled_from(["auto", "required", "none"]), st.fixed_dictionaries({"name": http_texts})
    ),
    "max_tokens": st.one_of(st.integers(-2, 6), json_values),
    "max_completion_tokens": st.integers(-1, 6),
    "temperature": st.one_of(st.floats(-1, 3, allow_nan=False), json_values),
    "top_p": st.floats(-0.5, 1.5, allow_nan=False),
    "seed": st.integers(-(2**65), 2**65),
    "stop": st.one_of(http_texts, st.lists(http_texts, max_size=20), json_values),
    "stream": st.one_of(st.booleans(), json_values),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), json_values),
    "presence_penalty": st.floats(-3, 3, allow_nan=False),
    "frequency_penalty": st.floats(-3, 3, allow_nan=False),
    "n": st.integers(-1, 3),
    "model": json_values,
    "encoding_format": st.sampled_from(["float", "base64", "hex"]),
    "prompt": st.one_of(http_texts, st.lists(http_texts, max_size=2), token_ids, json_values),
    "input": st.one_of(http_texts, st.lists(http_texts, max_size=3), token_ids, json_values),
    "trim_history": st.one_of(st.booleans(), json_values),
}
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"messages": http_messages}, optional=options),
    st.fixed_dictionaries({}, optional=options),
)
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]


@pytest.fixture(scope="module")
def http_server(tiny_vlm: tuple[Path, Path]) -> Iterator[str]:
    model, mmproj = tiny_vlm
    load = LlamaLoad(
        path=model,
        mmproj_path=mmproj,
        context_params=ContextParams(n_ctx=512, n_parallel=2, embeddings=True, n_predict=8),
        chat_template=TEMPLATE,
    )
    with serving(create_app(load, max_body_bytes=1 << 20)) as url:
        yield url


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.sampled_from(ENDPOINTS), st.one_of(bodies.map(lambda b: json.dumps(b).encode()), st.binary(max_size=40)))
def test_no_http_request_gets_a_5xx_or_stops_the_server(http_server: str, endpoint: str, body: bytes) -> None:
    headers = {"content-type": "application/json"}
    with httpx.stream("POST", http_server + endpoint, content=body, headers=headers, timeout=WAIT_S) as response:
        content = b"".join(response.iter_bytes())
    assert response.status_code in (200, 400), (response.status_code, content[:300])
    if response.headers["content-type"].startswith("text/event-stream"):
        assert content.endswith(b"data: [DONE]\n\n"), content[-300:]
    else:
        answer = json.loads(content)
        if response.status_code == 400:
            assert set(answer) == {"error"} and answer["error"]["message"], answer
            assert not re.search(r"scope-[0-9]+-", answer["error"]["message"]), answer  # no internal names
    assert httpx.get(http_server + "/health", timeout=WAIT_S).status_code == 200
    wait_until(lambda: metric(http_server, "llama_isolate_prompts_running") == 0, WAIT_S, "every prompt to end")
