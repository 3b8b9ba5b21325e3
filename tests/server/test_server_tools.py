"""Tool calls over HTTP, through the openai SDK: tools, tool_choice, tool_calls and tool results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from llama_isolate.server import create_app

from ..helpers.serving import serving
from ..helpers.tools import TOOLS, schema_of, tools_load

CHAT = "/v1/chat/completions"
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
BOUNDED = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]


@pytest.fixture(scope="module")
def base_url(model_path: Path) -> Iterator[str]:
    with serving(create_app(tools_load(model_path), model_name="smol")) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_required_gives_a_valid_call_and_finish_reason_tool_calls(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="any", messages=ASK, tools=TOOLS, tool_choice="required")
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    jsonschema.validate(json.loads(call.function.arguments), schema_of(call.function.name))


def test_a_named_function_streams_as_argument_deltas(client: openai.OpenAI) -> None:
    choice: Any = {"type": "function", "function": {"name": "get_weather"}}
    chunks = list(
        client.chat.completions.create(model="any", messages=ASK, tools=TOOLS, tool_choice=choice, stream=True)
    )
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    head, *rest = deltas
    assert head.id and head.id.startswith("call_") and head.type == "function"
    assert head.function is not None and head.function.name == "get_weather"
    assert all(d.index == 0 and d.id is None and d.function and d.function.name is None for d in rest)
    assert len(rest) > 2  # the arguments come piece by piece, as they are written
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    jsonschema.validate(json.loads(arguments), schema_of("get_weather"))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role] == ["assistant"]


def test_auto_answers_in_text_when_no_call_is_needed(client: openai.OpenAI) -> None:
    question = [{"role": "user", "content": "What is two plus two?"}]
    choice = client.chat.completions.create(model="any", messages=question, tools=TOOLS, max_tokens=12).choices[0]
    assert choice.message.content and not choice.message.tool_calls


def test_a_tool_result_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="any", messages=ASK, tools=TOOLS, tool_choice="required")
    message = first.choices[0].message
    (call,) = message.tool_calls or []
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 18})},
    ]
    answer = client.chat.completions.create(model="any", messages=history, tools=TOOLS, max_tokens=16)
    assert answer.choices[0].message.content is not None
    assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens > 0  # the first turn's cache served the history


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [*ASK, {"role": "tool", "content": "18"}]}, "messages[1].tool_call_id"),
        ({"messages": ASK, "tool_choice": "required"}, "tool_choice"),
        ({"messages": ASK, "tools": TOOLS, "tool_choice": {"name": "nope"}}, "tool_choice"),
        (
            {"messages": ASK, "tools": [{"type": "function", "function": {"name": "f", "parameters": BOUNDED}}]},
            "tools[0].function.parameters",
        ),
        ({"messages": ASK, "tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "user", "content": "hi", "tool_calls": [CALL]}, *ASK]}, "messages[0].tool_calls"),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{"}}]},
                    *ASK,
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": []}}]}]},
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_bad_tool_requests_are_400(base_url: str, body: dict[str, Any], param: str | None) -> None:
    response = httpx.post(base_url + CHAT, json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "scope-" not in error["message"]  # the server's own scopes stay out of the client's errors
    if param is not None:
        assert error["param"] == param, error


def test_a_tool_result_given_as_text_parts_reads_as_the_same_text(base_url: str) -> None:
    # LangChain's ToolMessage and MCP adapters send a result's content as a list of text parts (a 400 before).
    def usage_of(content: object) -> dict[str, Any]:
        messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [CALL]}]
        messages.append({"role": "tool", "tool_call_id": "call_1", "content": content})
        response = httpx.post(base_url + CHAT, json={"messages": messages, "tools": TOOLS, "max_tokens": 2}, timeout=60)
        assert response.status_code == 200, response.text
        usage: dict[str, Any] = response.json()["usage"]
        return usage

    whole = usage_of('{"time": "12:00", "zone": "CET"}')
    parts = usage_of([{"type": "text", "text": '{"time": "12:00",'}, {"type": "text", "text": ' "zone": "CET"}'}])
    assert parts["prompt_tokens"] == whole["prompt_tokens"]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [CALL]}]
    messages.append({"role": "tool", "tool_call_id": "call_1", "content": [image]})
    refused = httpx.post(base_url + CHAT, json={"messages": messages, "tools": TOOLS}, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages[2].content[0]"
