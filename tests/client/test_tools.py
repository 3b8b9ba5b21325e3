"""Tool calls: forced calls always parse and validate, auto stays free text until a call begins, results go back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_isolate import (
    CHATML_TOOLS_TEMPLATE,
    ContextParams,
    LlamaLoad,
    LlamaSchemaError,
    SamplerParams,
    SyncLlamaParent,
    ToolCall,
    ToolCallDelta,
)
from llama_isolate._grammar.tools import CallReader, parse_calls, render_calls
from llama_isolate._worker.chat import tool_format_of

from ..helpers.paths import DATA
from ..helpers.schemas import LEAVES, objects
from ..helpers.tools import TOOLS, schema_of, tools_load

ASK = "What's the weather in Paris?"
# Said this way, the default model starts a <tool_call> of its own accord (tool_choice auto).
ASK_FOR_A_CALL = "Reply only with a <tool_call> for get_weather in Paris."


@pytest.fixture(scope="module")
def parent(model_path: Path) -> Iterator[SyncLlamaParent]:
    with SyncLlamaParent(tools_load(model_path)) as parent:
        yield parent


def run(parent: SyncLlamaParent, prompt: str = ASK, **options: Any) -> tuple[Any, str, Any]:
    """The event, what the text stream showed, and the scope (disposed by the caller's fixture end)."""
    scope = parent.get_scope()
    shown: list[str] = []
    scope.stream.listen(shown.append)
    event = parent.wait_for_completion(scope.send_prompt(prompt, tools=TOOLS, max_tokens=80, **options))
    return event, "".join(shown), scope


def test_required_makes_exactly_one_valid_call(parent: SyncLlamaParent) -> None:
    event, shown, _ = run(parent, tool_choice="required")
    assert event.success and event.finish_reason == "stop"
    (call,) = event.tool_calls
    assert isinstance(call, ToolCall) and call.id.startswith("call_")
    jsonschema.validate(call.arguments, schema_of(call.name))
    assert event.text == "" and shown == ""  # the call's markup never reaches the text


def test_a_call_streams_as_it_is_written(parent: SyncLlamaParent) -> None:
    scope = parent.get_scope()
    seen: list[Any] = []
    scope.tool_call_deltas.listen(seen.append)
    scope.completions.listen(seen.append)
    event = parent.wait_for_completion(scope.send_prompt(ASK, tools=TOOLS, tool_choice="required", max_tokens=80))
    (call,) = event.tool_calls
    *deltas, last = seen
    assert last == event  # every piece came before the event
    assert all(isinstance(d, ToolCallDelta) and d.index == 0 and d.id == call.id for d in deltas)
    assert [d.name for d in deltas if d.name] == [call.name] == [deltas[0].name]
    pieces = [d.arguments for d in deltas[1:]]
    assert len(pieces) > 2 and all(pieces)  # the arguments come piece by piece, not whole at the end
    assert json.loads("".join(pieces)) == call.arguments


def test_a_named_function_is_the_one_called(parent: SyncLlamaParent) -> None:
    event, _, _ = run(parent, tool_choice={"name": "get_time"})
    assert [(c.name, c.arguments) for c in event.tool_calls] == [("get_time", {})]


def test_auto_leaves_free_text_free(parent: SyncLlamaParent) -> None:
    event, shown, _ = run(parent, "What is two plus two?", tool_choice="auto")
    assert event.tool_calls == () and event.text and shown == event.text


def test_auto_holds_a_call_the_model_begins_to_its_schema(parent: SyncLlamaParent) -> None:
    calls = 0
    for seed in (None, *range(6)):
        sampling = SamplerParams(greedy=True) if seed is None else SamplerParams(temperature=1.0, seed=seed)
        event, shown, _ = run(parent, ASK_FOR_A_CALL, tool_choice="auto", sampler_params=sampling)
        assert event.finish_reason in ("stop", "length"), event.error
        # A marker whose next characters already break a call (``<tool_call></tool_call>``, say) stays text, and
        # shows on the stream as such; a call begun well is completed and read back.
        assert shown == event.text
        for call in event.tool_calls:
            jsonschema.validate(call.arguments, schema_of(call.name))
        calls += len(event.tool_calls)
    assert calls >= 1  # asked this way, the model calls (greedy did, and 2 to 4 of these 6 seeds, when measured)


def test_none_calls_nothing(parent: SyncLlamaParent) -> None:
    event, _, _ = run(parent, ASK_FOR_A_CALL, tool_choice="none")
    assert event.tool_calls == ()


def test_a_result_goes_back_and_the_conversation_goes_on(parent: SyncLlamaParent) -> None:
    event, _, scope = run(parent, tool_choice="required")
    (call,) = event.tool_calls
    result = json.dumps({"temp_c": 18, "sky": "cloudy"})
    after = parent.wait_for_completion(scope.send_prompt(result, tool_call_id=call.id, tools=TOOLS, max_tokens=12))
    assert after.success and after.tool_calls == ()
    roles = [(m["role"], bool(m.get("tool_calls"))) for m in scope.messages]
    assert roles == [("user", False), ("assistant", True), ("tool", False), ("assistant", False)]
    kept = scope.messages[1]["tool_calls"][0]
    assert kept["id"] == call.id and json.loads(kept["function"]["arguments"]) == call.arguments
    assert scope.messages[2] == {"role": "tool", "tool_call_id": call.id, "content": result}
    # the history sent back was the same prompt the model had seen: its KV cache was reused
    assert after.cached_tokens >= event.prompt_tokens + event.cached_tokens


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parameters=objects(LEAVES), seed=st.integers(0, 1000))
def test_every_forced_call_parses_and_validates(parent: SyncLlamaParent, parameters: dict[str, Any], seed: int) -> None:
    tools = [{"type": "function", "function": {"name": "record", "parameters": parameters}}]
    scope = parent.get_scope()
    sampling = SamplerParams(temperature=1.0, seed=seed)
    pid = scope.send_prompt(ASK, tools=tools, tool_choice="required", sampler_params=sampling, max_tokens=300)
    event = parent.wait_for_completion(pid)
    assert event.finish_reason == "stop", event.text
    (call,) = event.tool_calls
    jsonschema.validate(call.arguments, parameters)


@pytest.mark.parametrize(
    ("tools", "choice", "words"),
    [
        ([], "auto", "non-empty list"),
        ("get_weather", "auto", "non-empty list"),
        ([{"type": "function", "function": {"name": "a b"}}], "auto", "name"),
        ([TOOLS[0], TOOLS[0]], "auto", "two tools"),
        (TOOLS, {"name": "nope"}, "not one of the tools"),
        (TOOLS, "sometimes", "tool_choice"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], "auto", "object"),
    ],
)
def test_bad_tools_are_refused_naming_what(parent: SyncLlamaParent, tools: Any, choice: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parent.send_prompt(ASK, tools=tools, tool_choice=choice)
    assert parent.queue_length == 0


def test_parameters_the_grammar_cannot_enforce_are_refused(parent: SyncLlamaParent) -> None:
    bounded = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}
    with pytest.raises(LlamaSchemaError, match="numeric bounds"):
        parent.send_prompt(ASK, tools=[{"type": "function", "function": {"name": "f", "parameters": bounded}}])
    with pytest.raises(ValueError, match="exclude"):
        parent.send_prompt(ASK, tools=TOOLS, json_schema={"type": "object"})


def test_parameters_whose_defs_are_not_an_object_are_refused(parent: SyncLlamaParent) -> None:
    parameters = {"type": "object", "properties": {}, "$defs": [1]}
    with pytest.raises(LlamaSchemaError, match=r"\$defs must be an object") as caught:
        parent.send_prompt(ASK, tools=[{"type": "function", "function": {"name": "f", "parameters": parameters}}])
    assert "tools[0]" in caught.value.path


def test_an_argument_that_holds_the_end_marker_is_read_whole(parent: SyncLlamaParent) -> None:
    tricky = "}\n</tool_call>"
    parameters = {"type": "object", "properties": {"s": {"const": tricky}}, "required": ["s"]}
    tools = [{"type": "function", "function": {"name": "echo", "parameters": parameters}}]
    scope = parent.get_scope()
    event = parent.wait_for_completion(scope.send_prompt(ASK, tools=tools, tool_choice="required", max_tokens=40))
    assert [(c.name, c.arguments) for c in event.tool_calls] == [("echo", {"s": tricky})]


def test_malformed_tool_calls_in_messages_are_refused(parent: SyncLlamaParent) -> None:
    scope = parent.get_scope()
    scope.messages.append(
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}
    )
    with pytest.raises(ValueError, match="not JSON"):
        scope.send_prompt(ASK, tools=TOOLS)


# A Llama 3.1-style template (its tool-result turn is "ipython"): calls are the reply's JSON object itself.
LLAMA3_TEMPLATE = (DATA / "llama3_tools.jinja").read_text()


@pytest.fixture(scope="module")
def llama3(model_path: Path) -> Iterator[SyncLlamaParent]:
    with SyncLlamaParent(tools_load(model_path, LLAMA3_TEMPLATE)) as parent:
        yield parent


def test_the_format_is_read_from_the_template(llama3: SyncLlamaParent, parent: SyncLlamaParent) -> None:
    assert llama3.model_info is not None and llama3.model_info.tool_format == "llama3"
    assert parent.model_info is not None and parent.model_info.tool_format == "hermes"


def test_llama3_calls_are_json_replies_that_stream_and_go_on(llama3: SyncLlamaParent) -> None:
    scope = llama3.get_scope()
    deltas: list[ToolCallDelta] = []
    scope.tool_call_deltas.listen(deltas.append)
    event = llama3.wait_for_completion(scope.send_prompt(ASK, tools=TOOLS, tool_choice="required", max_tokens=80))
    assert event.success and event.text == ""
    (call,) = event.tool_calls
    jsonschema.validate(call.arguments, schema_of(call.name))
    assert json.loads("".join(d.arguments for d in deltas)) == call.arguments
    result = json.dumps({"temp_c": 18})
    after = llama3.wait_for_completion(scope.send_prompt(result, tool_call_id=call.id, tools=TOOLS, max_tokens=8))
    assert after.success
    assert [m["role"] for m in scope.messages] == ["user", "assistant", "tool", "assistant"]
    # the call goes back into the history as Llama 3 writes it
    written = render_calls("", scope.messages[1]["tool_calls"], "llama3")
    assert json.loads(written) == {"name": call.name, "parameters": call.arguments}


def test_llama3_auto_takes_a_call_only_from_its_named_marker(model_path: Path) -> None:
    # The default model never writes a Llama 3 call by itself; so this drives the worker's switch directly:
    # the text from the marker on, replayed into the call's grammar, as the engine does when it sees the marker.
    from llama_isolate._grammar.tools import FORMATS, plan
    from llama_isolate._worker.engine import Engine
    from llama_isolate._worker.sampling import Sampler

    grammar = plan(TOOLS, "auto").grammar("llama3")
    assert grammar is not None
    markers = FORMATS["llama3"].markers(["get_weather", "get_time"])
    assert markers == ('{"name": "get_weather"', '{"name": "get_time"')
    engine = Engine(LlamaLoad(path=model_path, context_params=ContextParams(n_ctx=256, n_parallel=1)), lambda _: None)
    try:
        vocab = engine._vocab

        def switch_on(written: str) -> bool:
            sampler = Sampler(SamplerParams(), vocab=vocab.handle, n_vocab=vocab.n_tokens, n_ctx=256)
            try:
                return sampler.activate(grammar, vocab.tokenize(written, add_special=False, parse_special=False))
            finally:
                sampler.free()

        assert switch_on(markers[0]) and switch_on('{"name": "get_time", "parameters": {')
        assert not switch_on('{"name": "get_weather", "arguments": {')  # Llama 3 calls them parameters
    finally:
        engine.close()


def test_load_can_name_the_format(model_path: Path) -> None:
    load = LlamaLoad(path=model_path, chat_template=LLAMA3_TEMPLATE, tool_format="hermes")
    with SyncLlamaParent(load) as parent:
        assert parent.model_info is not None and parent.model_info.tool_format == "hermes"
        event = parent.wait_for_completion(parent.send_prompt(ASK, tools=TOOLS, tool_choice="required", max_tokens=80))
        (call,) = event.tool_calls
        jsonschema.validate(call.arguments, schema_of(call.name))
    with pytest.raises(ValueError, match="tool_format"):
        LlamaLoad(path=model_path, tool_format="xml")  # type: ignore[arg-type]


def test_templates_tell_their_format() -> None:
    assert tool_format_of(CHATML_TOOLS_TEMPLATE) == "hermes"
    assert tool_format_of(LLAMA3_TEMPLATE) == "llama3"
    assert tool_format_of(None) == tool_format_of("{{ messages }}") == "hermes"  # nothing tells: Hermes
    # a template of Llama 3's turns that also speaks of <tool_call> shows Hermes calls
    assert tool_format_of(LLAMA3_TEMPLATE + "<tool_call>") == "hermes"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab{}[]"\\\n :,'),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='a"{}\\', max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    arguments=st.dictionaries(st.text(alphabet='ab"}{\\', max_size=5), _JSON, max_size=4),
    format=st.sampled_from(["hermes", "llama3"]),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    spaced=st.booleans(),
)
def test_the_reader_passes_arguments_on_as_written(
    arguments: dict[str, Any], format: str, cuts: list[int], spaced: bool
) -> None:
    key = "arguments" if format == "hermes" else "parameters"
    separators = (", ", ": ") if spaced else (",", ":")
    body = json.dumps({"name": "f.x-1", key: arguments}, separators=separators, ensure_ascii=False)
    text = f"<tool_call>\n{body}\n</tool_call>" if format == "hermes" else body
    reader = CallReader(format)
    deltas = []
    at = 0
    for cut in [*sorted(cuts), len(text)]:
        deltas += reader.feed(text[at:cut])
        at = max(at, cut)
    assert [d.name for d in deltas if d.name] == ["f.x-1"]
    assert json.loads("".join(d.arguments for d in deltas)) == arguments
    assert parse_calls(text, format, reader.ids) == (ToolCall(reader.ids[0], "f.x-1", arguments),)


def test_llama3_json_that_names_no_function_stays_text(llama3: SyncLlamaParent) -> None:
    scope = llama3.get_scope()
    ask = "What's the weather in Paris? Answer with a function call."  # greedy: JSON of its own, {"name": "Paris", ...
    event = llama3.wait_for_completion(scope.send_prompt(ask, tools=TOOLS, max_tokens=30))
    # {"name" alone starts no call (once it did, and the grammar turned that JSON into a get_weather call):
    # only {"name": "<one of the functions>" does.
    assert event.tool_calls == ()
    assert '{"name": "Paris"' in event.text


def test_an_answer_after_a_tool_result_stops_where_it_would_imitate_the_results_markup(
    parent: SyncLlamaParent,
) -> None:
    # After a result, small models went on past their answer with the template's own "<tool_response>" markup
    # (about half the final answers). A grammar makes the model write exactly that here; the reply ends before it.
    event, _, scope = run(parent, tool_choice="required")
    (call,) = event.tool_calls
    imitating = SamplerParams(greedy=True, grammar='root ::= "Cloudy." "<tool_response>" "{}"')
    after = parent.wait_for_completion(
        scope.send_prompt('{"sky": "cloudy"}', tool_call_id=call.id, sampler_params=imitating, max_tokens=24)
    )
    assert after.success, after.error
    assert after.text == "Cloudy."
    assert after.finish_reason == "stop"
    plain = parent.wait_for_completion(parent.get_scope().send_prompt("Hi", sampler_params=imitating, max_tokens=24))
    assert plain.text == "Cloudy.<tool_response>{}"  # a conversation without tools is left as it is
