"""A refused argument says which one for a program: `LlamaValueError.param` and `.code`, and the server's 400 too."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llama_isolate import (
    ContextParams,
    LlamaContextLengthExceeded,
    LlamaError,
    LlamaFeatureNotEnabled,
    LlamaImage,
    LlamaLoad,
    LlamaQueueFull,
    LlamaRequestError,
    LlamaSchemaError,
    LlamaStateError,
    LlamaStatusError,
    LlamaTypeError,
    LlamaValueError,
    ModelParams,
    SamplerParams,
    SyncLlamaParent,
    check_messages,
)
from llama_isolate.server import create_app
from llama_isolate.server.errors import api_error_of

from .conftest import RED
from .serving import serving
from .test_tools import TOOLS, tools_load

BOUNDED = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}


def refusal(action: Callable[[], object]) -> LlamaValueError | LlamaTypeError:
    with pytest.raises((LlamaValueError, LlamaTypeError)) as caught:
        action()
    assert isinstance(caught.value, LlamaError)
    return caught.value


# ---------------------------------------------------------------- the classes


def test_the_new_errors_stay_what_callers_catch_today() -> None:
    value, kind = LlamaValueError("bad", param="n"), LlamaTypeError("wrong", param="prompt")
    assert isinstance(value, ValueError) and isinstance(value, LlamaError)
    assert isinstance(kind, TypeError) and isinstance(kind, LlamaError) and not isinstance(kind, ValueError)
    assert (value.param, value.code, kind.code) == ("n", "invalid_value", "invalid_type")
    schema = LlamaSchemaError("'minimum' is not supported", "/minimum")
    assert isinstance(schema, LlamaRequestError) and isinstance(schema, LlamaValueError)
    assert (schema.param, schema.code, schema.path) == ("json_schema", "invalid_schema", "/minimum")
    state = LlamaStateError("damaged")
    assert isinstance(state, LlamaRequestError) and isinstance(state, LlamaValueError)
    assert (state.param, state.code) == ("data", "invalid_value")


def test_they_survive_pickling_with_their_attributes() -> None:
    for error in (
        LlamaValueError("bad", param="messages[1].content", code="invalid_type"),
        LlamaTypeError("wrong", param="images"),
        LlamaSchemaError("'minimum' is not supported", "/minimum", param="tools[0].function.parameters"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy), copy.param, copy.code) == (type(error), str(error), error.param, error.code)


# ---------------------------------------------------------------- construction-time checks


@pytest.mark.parametrize(
    ("factory", "param", "code"),
    [
        (lambda: SamplerParams(temperature=-0.1), "sampler_params.temperature", "invalid_value"),
        (lambda: SamplerParams(top_k="40"), "sampler_params.top_k", "invalid_type"),  # type: ignore[arg-type]
        (lambda: SamplerParams(stop=("",)), "sampler_params.stop", "invalid_value"),
        (lambda: SamplerParams(logit_bias=((-1, 1.0),)), "sampler_params.logit_bias", "invalid_value"),
        (lambda: ContextParams(n_ctx=0), "context_params.n_ctx", "invalid_value"),
        (lambda: ContextParams(embeddings="yes"), "context_params.embeddings", "invalid_type"),  # type: ignore[arg-type]
        (lambda: ModelParams(tensor_split=(0.5, -1.0)), "model_params.tensor_split[1]", "invalid_value"),
        (lambda: LlamaLoad(path=""), "path", "invalid_value"),
        (lambda: LlamaLoad(path=3), "path", "invalid_type"),  # type: ignore[arg-type]
        (lambda: LlamaLoad(path="m.gguf", sampler_params={}), "sampler_params", "invalid_type"),  # type: ignore[arg-type]
        (lambda: LlamaLoad(path="m.gguf", max_messages=0), "max_messages", "invalid_value"),
        (lambda: LlamaImage(b""), "data", "invalid_value"),
        (lambda: LlamaImage("png"), "data", "invalid_type"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_field_is_named_as_a_load_holds_it(factory: Callable[[], object], param: str, code: str) -> None:
    error = refusal(factory)
    assert (error.param, error.code) == (param, code), error


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("hello", "messages"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant"}], "messages[1].content"),
        ([{"content": "Hi"}], "messages[0].role"),
        ([{"role": "user", "content": 3}], "messages[0].content"),
        ([{"role": "", "content": "Hi"}], "messages[0].role"),
        ([{"role": "user", "content": "Look", "images": (RED,)}], "messages[0].content"),  # no marker for it
        ([{"role": "user", "content": "<__media__>", "images": ["x"]}], "messages[0].images[0]"),
        (
            [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}],
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "", "arguments": {}}}]}],
            "messages[0].tool_calls[0].function.name",
        ),
    ],
)
def test_check_messages_names_the_bad_field(messages: object, param: str) -> None:
    error = refusal(lambda: check_messages(messages))
    assert error.param == param, error
    assert check_messages([{"role": "user", "content": "What does <__media__> mean?"}])  # text, with no images


# ---------------------------------------------------------------- send-time checks


@pytest.fixture(scope="module")
def parent(model_path: Path) -> Iterator[SyncLlamaParent]:
    with SyncLlamaParent(tools_load(model_path)) as parent:
        yield parent


@pytest.mark.parametrize(
    ("options", "param", "code"),
    [
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"max_tokens": "8"}, "max_tokens", "invalid_type"),
        ({"n": 3}, "n", "invalid_value"),  # more choices than the 2 slots
        ({"tools": []}, "tools", "invalid_value"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name", "invalid_value"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name", "invalid_value"),
        ({"tools": [TOOLS[0], "get_time"]}, "tools[1]", "invalid_type"),
        ({"tools": TOOLS, "tool_choice": {"name": "nope"}}, "tool_choice", "invalid_value"),
        (
            {"tools": [*TOOLS, {"type": "function", "function": {"name": "f", "parameters": BOUNDED}}]},
            "tools[2].function.parameters",
            "invalid_schema",
        ),
        (  # only the named function's grammar is made; its place among the tools is still the one named
            {
                "tools": [*TOOLS, {"type": "function", "function": {"name": "f", "parameters": BOUNDED}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
            },
            "tools[2].function.parameters",
            "invalid_schema",
        ),
        ({"json_schema": {"type": "integer", "minimum": 0}}, "json_schema", "invalid_schema"),
    ],
)
def test_a_bad_prompt_argument_is_named(
    parent: SyncLlamaParent, options: dict[str, Any], param: str, code: str
) -> None:
    error = refusal(lambda: parent.send_prompt("Hi", **options))
    assert (error.param, error.code) == (param, code), error
    assert parent.queue_length == 0


def test_a_malformed_scope_message_is_named_as_an_entry_of_messages(parent: SyncLlamaParent) -> None:
    scope = parent.get_scope()
    scope.messages.extend([{"role": "user", "content": "Hi"}, {"role": "assistant"}])
    error = refusal(lambda: scope.send_prompt("Hello"))
    assert (error.param, error.code) == ("messages[1].content", "invalid_value")
    assert "messages[1] has no 'content'" in str(error) and "scope-" not in str(error)


def test_a_listener_that_is_not_a_function_is_named(parent: SyncLlamaParent) -> None:
    error = refusal(lambda: parent.stream.listen(None))  # type: ignore[arg-type]
    assert isinstance(error, TypeError) and error.param == "callback"


# ---------------------------------------------------------------- the server's answer


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
