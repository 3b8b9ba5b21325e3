"""Generated HTTP requests to the server: it answers each, and keeps serving.

Hypothesis generates request bodies (JSON of any shape, malformed messages
and content parts, bad images, out-of-range options, bytes that are not
JSON) for each endpoint of a server on the tiny vision model, and of the same
server behind the Ray front's code (its checks, its conversation points, the
bridge a model replica runs). Each gets a 200 or a 400 with OpenAI's error
object, never a 5xx, and the server keeps serving with nothing left running. The parent's side of this is
tests/client/test_fuzz.py.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_isolate import MEDIA_MARKER, ContextParams, LlamaLoad
from llama_isolate.server import create_app

from ..helpers.fuzz import TEMPLATE, texts
from ..helpers.pictures import RED
from ..helpers.server_tools import metric, metric_total, wait_until
from ..helpers.serving import serving

WAIT_S = 30.0

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


def fuzz_app(tiny_vlm: tuple[Path, Path]) -> FastAPI:
    model, mmproj = tiny_vlm
    load = LlamaLoad(
        path=model,
        mmproj_path=mmproj,
        context_params=ContextParams(n_ctx=512, n_parallel=2, embeddings=True, n_predict=8),
        chat_template=TEMPLATE,
    )
    return create_app(load, max_body_bytes=1 << 20)


@pytest.fixture(scope="module")
def http_server(tiny_vlm: tuple[Path, Path]) -> Iterator[str]:
    with serving(fuzz_app(tiny_vlm)) as url:
        yield url


@pytest.fixture(scope="module")
def front_server(tiny_vlm: tuple[Path, Path]) -> Iterator[str]:
    """The same server behind the Ray front's code (its checks, its points, the bridge), with no cluster."""
    pytest.importorskip("ray")
    from ..helpers.front import front_over

    app, _ = front_over(fuzz_app(tiny_vlm), max_body_bytes=1 << 20)
    with serving(app) as url:
        yield url


FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
REQUESTS = (st.sampled_from(ENDPOINTS), st.one_of(bodies.map(lambda b: json.dumps(b).encode()), st.binary(max_size=40)))


@FUZZ_SETTINGS
@given(*REQUESTS)
def test_no_http_request_gets_a_5xx_or_stops_the_server(http_server: str, endpoint: str, body: bytes) -> None:
    answered_well(http_server, endpoint, body)
    wait_until(lambda: metric(http_server, "llama_isolate_prompts_running") == 0, WAIT_S, "every prompt to end")


@FUZZ_SETTINGS
@given(*REQUESTS)
def test_no_http_request_through_the_ray_front_gets_a_5xx_or_stops_it(
    front_server: str, endpoint: str, body: bytes
) -> None:
    answered_well(front_server, endpoint, body)
    wait_until(lambda: metric_total(front_server, "llama_isolate_prompts_running") == 0, WAIT_S, "every prompt to end")


def answered_well(url: str, endpoint: str, body: bytes) -> None:
    """A 200 or a 400 with OpenAI's error object (a stream ends with [DONE]), and /health still answers."""
    headers = {"content-type": "application/json"}
    with httpx.stream("POST", url + endpoint, content=body, headers=headers, timeout=WAIT_S) as response:
        content = b"".join(response.iter_bytes())
    assert response.status_code in (200, 400), (response.status_code, content[:300])
    if response.headers["content-type"].startswith("text/event-stream"):
        assert content.endswith(b"data: [DONE]\n\n"), content[-300:]
    else:
        answer = json.loads(content)
        if response.status_code == 400:
            assert set(answer) == {"error"} and answer["error"]["message"], answer
            assert not re.search(r"scope-[0-9]+-", answer["error"]["message"]), answer  # no internal names
    assert httpx.get(url + "/health", timeout=WAIT_S).status_code == 200


def test_a_model_with_an_mmproj_is_listed_as_reading_images(http_server: str) -> None:
    listed = httpx.get(http_server + "/v1/models").json()["data"]
    assert [m["input_modalities"] for m in listed] == [["text", "image"]]
    one = httpx.get(f"{http_server}/v1/models/{listed[0]['id']}").json()
    assert one["input_modalities"] == ["text", "image"]
