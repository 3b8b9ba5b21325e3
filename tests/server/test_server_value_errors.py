"""Library errors over HTTP: each becomes OpenAI's error JSON naming the request's field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llama_isolate import (
    LlamaContextLengthExceeded,
    LlamaFeatureNotEnabled,
    LlamaQueueFull,
    LlamaSchemaError,
    LlamaStatusError,
    LlamaTypeError,
    LlamaValueError,
)
from llama_isolate.server import create_app
from llama_isolate.server.errors import api_error_of

from ..helpers.serving import serving
from ..helpers.tools import tools_load

BOUNDED = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("error", "status", "param", "code"),
    [
        (LlamaValueError("SamplerParams.top_p ...", param="sampler_params.top_p"), 400, "top_p", "invalid_value"),
        (
            LlamaValueError("SamplerParams.greedy ...", param="sampler_params.greedy"),
            400,
            "temperature",
            "invalid_value",
        ),
        (LlamaSchemaError("'minimum' is not supported", "/minimum"), 400, "response_format", "invalid_schema"),
        (LlamaSchemaError("bounds", "/anyOf/0", param="tools[0].function.parameters"), 400, None, "invalid_schema"),
        (LlamaValueError("messages[2] has no 'content'", param="messages[2].content"), 400, None, "invalid_value"),
        (LlamaValueError("tools[1] needs a 'name'", param="tools[1].function.name"), 400, None, "invalid_value"),
        (LlamaValueError("n must be an int", param="n"), 400, None, "invalid_value"),
        (LlamaValueError("prompt is not valid text", param="prompt"), 400, "messages", "invalid_value"),
        (LlamaTypeError("images must be ...", param="images"), 400, "messages", "invalid_type"),
        (LlamaValueError("image too large", param="images[0]"), 400, "messages", "invalid_value"),
        (ValueError("a check that names no param"), 400, "messages", "invalid_value"),
        (LlamaFeatureNotEnabled("image prompts need an mmproj"), 400, "messages", "images_not_supported"),
        (LlamaContextLengthExceeded("too long"), 400, "messages", "context_length_exceeded"),
        (LlamaQueueFull("8 prompts are waiting"), 429, None, "queue_full"),
        (LlamaStatusError("init() first"), 503, None, "model_not_ready"),
    ],
)
def test_a_library_error_becomes_the_openai_error_naming_the_request_field(
    error: BaseException, status: int, param: str | None, code: str
) -> None:
    answer = api_error_of(error, default_param="messages")
    assert answer is not None
    expected = param if param is not None or status != 400 else getattr(error, "param", None)
    assert (answer.status, answer.param, answer.code) == (status, expected, code), answer.body()
    assert str(error) in answer.message


def test_what_is_not_the_requests_nor_the_models_state_is_left_alone() -> None:
    assert api_error_of(RuntimeError("a bug"), default_param="messages") is None
    embeddings = api_error_of(LlamaFeatureNotEnabled("no embeddings"), default_param="input", feature="embeddings")
    assert embeddings is not None and (embeddings.param, embeddings.code) == ("model", "embeddings_not_enabled")


@pytest.fixture(scope="module")
def base_url(model_path: Path) -> Iterator[str]:
    with serving(create_app(tools_load(model_path), model_name="smol")) as url:
        yield url


def ask(base_url: str, **body: Any) -> httpx.Response:
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return httpx.post(base_url + "/v1/chat/completions", json={"max_tokens": 2, **body}, timeout=60)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"seed": -5}, "seed", "invalid_value"),  # pydantic takes any int; SamplerParams refuses it
        ({"seed": 2**40, "temperature": 0.5}, "seed", "invalid_value"),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "", "arguments": "{}"}}]},
                    {"role": "user", "content": "Hi"},
                ]
            },
            "messages[0].tool_calls[0].function.name",
            "invalid_value",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}]},
                    {"role": "user", "content": "Hi"},
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
            "invalid_value",
        ),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": BOUNDED}}}, "response_format", None),
    ],
)
def test_the_servers_400_names_the_field(base_url: str, body: dict[str, Any], param: str, code: str | None) -> None:
    response = ask(base_url, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["code"] == (code or "invalid_schema"), error


def test_the_servers_400_for_a_bad_tool_names_the_tools(base_url: str) -> None:
    response = ask(base_url, tools=[{"type": "function", "function": {"name": "a b"}}])
    assert response.status_code == 400, response.text
    assert str(response.json()["error"]["param"]).startswith("tools"), response.text


def test_a_message_that_mentions_the_image_marker_is_text_as_in_the_library(base_url: str) -> None:
    response = ask(base_url, messages=[{"role": "user", "content": "What does <__media__> mean?"}])
    assert response.status_code == 200, response.text
