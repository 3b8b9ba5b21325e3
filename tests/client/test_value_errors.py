"""A refused argument says which one for a program: `LlamaValueError.param` and `.code`, and the server's 400 too."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llama_isolate import (
    ContextParams,
    LlamaError,
    LlamaImage,
    LlamaLoad,
    LlamaRequestError,
    LlamaSchemaError,
    LlamaStateError,
    LlamaTypeError,
    LlamaValueError,
    ModelParams,
    SamplerParams,
    SyncLlamaParent,
    check_messages,
)

from ..helpers.pictures import RED
from ..helpers.tools import TOOLS, tools_load

BOUNDED = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}


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
