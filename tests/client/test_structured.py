"""Structured output: `json_schema=` replies always parse and validate, and what cannot be enforced is refused."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_isolate import ContextParams, LlamaLoad, LlamaSchemaError, SamplerParams, SyncLlamaParent
from llama_isolate._grammar.schema import json_schema_grammar

from ..helpers.schemas import SCHEMAS

ASK = "Write an example of the data as JSON."
# Room for every reply the generated schemas allow (strings and arrays are bounded), so each one closes.
ROOM = 400


@pytest.fixture(scope="module")
def parent(model_path: Path) -> Iterator[SyncLlamaParent]:
    load = LlamaLoad(path=model_path, context_params=ContextParams(n_ctx=2048, n_parallel=2))
    with SyncLlamaParent(load) as parent:
        yield parent


def reply(parent: SyncLlamaParent, schema: dict[str, Any], *, seed: int = 1, max_tokens: int = ROOM) -> Any:
    sampling = SamplerParams(temperature=1.0, seed=seed)  # sampled, not greedy: more varied outputs
    scope = parent.get_scope()
    try:
        pid = scope.send_prompt(ASK, json_schema=schema, sampler_params=sampling, max_tokens=max_tokens)
        return parent.wait_for_completion(pid)
    finally:
        scope.dispose()


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=SCHEMAS, seed=st.integers(0, 1000))
def test_every_reply_parses_and_validates_against_its_schema(
    parent: SyncLlamaParent, schema: dict[str, Any], seed: int
) -> None:
    event = reply(parent, schema, seed=seed)
    assert event.finish_reason == "stop", (event.finish_reason, event.text)
    jsonschema.validate(json.loads(event.text), schema)


def test_local_refs_and_recursion_are_followed(parent: SyncLlamaParent) -> None:
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                },
                "required": ["v", "next"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/Node",
    }
    event = reply(parent, schema, max_tokens=200)
    if event.finish_reason == "stop":  # a linked list may run on until max_tokens
        jsonschema.validate(json.loads(event.text), schema)
    else:
        assert event.finish_reason == "length"


def test_the_properties_come_in_the_schemas_order(parent: SyncLlamaParent) -> None:
    schema = {
        "type": "object",
        "properties": {"zeta": {"type": "integer"}, "alpha": {"type": "boolean"}},
        "required": ["zeta", "alpha"],
    }
    value = json.loads(reply(parent, schema).text)
    assert list(value) == ["zeta", "alpha"]


def test_a_cut_reply_ends_with_length_and_is_incomplete(parent: SyncLlamaParent) -> None:
    schema = {"type": "object", "properties": {"story": {"type": "string", "minLength": 50}}, "required": ["story"]}
    event = reply(parent, schema, max_tokens=4)
    assert event.finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(event.text)


def test_long_repetitions_up_to_llamas_cap_run(parent: SyncLlamaParent) -> None:
    """A maxLength of 2000 (llama.cpp's parser gave up on the converter's nested spelling of it)."""
    schema = {"type": "object", "properties": {"story": {"type": "string", "maxLength": 2000}}, "required": ["story"]}
    event = reply(parent, schema, max_tokens=8)
    assert event.success, event.error
    assert event.text.startswith('{ "story"') or event.text.startswith('{"story"')


ODD_NAMES = {"c\\d": {"type": "integer"}, "e\nf\tg": {"type": "boolean"}, 'a"b': {"const": '"\\😀猫'}}


def test_odd_property_names_and_constants_still_give_valid_json(parent: SyncLlamaParent) -> None:
    """Backslashes, control characters, quotes and emoji in names and constants are JSON-escaped, as JSON wants."""
    schema = {"type": "object", "properties": ODD_NAMES, "required": list(ODD_NAMES)}
    event = reply(parent, schema)
    assert event.finish_reason == "stop"
    value = json.loads(event.text)
    jsonschema.validate(value, schema)
    assert value['a"b'] == '"\\😀猫'


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet='^$[]{}()|*+?.\\ad-,019"', max_size=14))
def test_any_pattern_is_refused_or_converted_at_once(body: str) -> None:
    """The converter loops forever on some patterns: every pattern must be refused or converted promptly."""
    outcome: list[object] = []

    def convert() -> None:
        try:
            outcome.append(json_schema_grammar({"type": "string", "pattern": f"^{body}$"}))
        except LlamaSchemaError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=convert, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert outcome, f"converting the pattern ^{body}$ did not end"


def test_json_schema_and_a_grammar_exclude_each_other(parent: SyncLlamaParent) -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        parent.send_prompt(ASK, json_schema={"type": "integer"}, sampler_params=SamplerParams(grammar='root ::= "1"'))


# ------------------------------------------------------------------ refused, before anything runs

REFUSED = [
    ({"type": "integer", "minimum": 0}, "/minimum", "numeric bounds"),
    ({"type": "number", "multipleOf": 2}, "/multipleOf", "multipleOf"),
    ({"type": "string", "pattern": "[a-z]+"}, "/pattern", "anchored"),
    ({"type": "string", "pattern": "^a.c$"}, "/pattern", "'.'"),
    ({"type": "string", "pattern": "^[^x]+$"}, "/pattern", "negated"),
    ({"type": "string", "pattern": r"^\s+$"}, "/pattern", "escape"),
    ({"type": "string", "format": "email"}, "/format", "email"),
    ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "", "only one of"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "/uniqueItems", "distinct"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "/oneOf", "anyOf"),
    ({"allOf": [{"type": "object"}]}, "/allOf", "merge"),
    ({"not": {"type": "null"}}, "/not", "not"),
    ({"$ref": "https://example.com/s.json"}, "", "local"),
    ({"$ref": "#/$defs/Missing"}, "/$ref", "points at nothing"),
    ({"$defs": {"A": {"type": "integer"}}, "$ref": "#/$defs/A", "maximum": 3}, "/maximum", "numeric bounds"),
    ({"$defs": {"A": {"type": "integer", "maximum": 3}}, "$ref": "#/$defs/A"}, "/$defs/A/maximum", "numeric"),
    ({"type": "object", "required": ["a"]}, "/required", "no schema"),
    ({"type": "object", "properties": {"a": {}}, "additionalProperties": True}, "/additionalProperties", "name"),
    ({"type": "object", "properties": {"a": {"type": "integer", "exclusiveMinimum": 1}}}, "/properties/a", "bounds"),
    ({"type": "object", "patternProperties": {"^x": {}}}, "/patternProperties", "patternProperties"),
    ({"type": ["string", "null"], "maxLength": 3}, "", "anyOf"),
    ({"enum": [1, "a"], "type": "integer"}, "/enum/1", "type"),
    ({"type": "array", "minItems": 3, "maxItems": 2}, "", "nothing can match"),
    ({"type": "strin"}, "/type", "unknown type"),
    ({"type": "string", "maxLength": 2001}, "/maxLength", "2000"),
    # patterns that made llama-cpp-python's converter loop forever, or the grammar stall the engine
    ({"type": "string", "pattern": "^a]$"}, "/pattern", "outside a class"),
    ({"type": "string", "pattern": "^a}$"}, "/pattern", "ends no quantifier"),
    ({"type": "string", "pattern": "^[]a]$"}, "/pattern", "first"),
    ({"type": "string", "pattern": "^(a{0,100}){0,100}$"}, "/pattern", "repeated group"),
    ({"type": "string", "pattern": "^(a*)*$"}, "/pattern", "repeated group"),
    ({"type": "string", "pattern": "^(|a)+$"}, "/pattern", "empty alternative"),
    ({"type": "string", "pattern": "^\U0001f600+$"}, "/pattern", "Basic Multilingual Plane"),
    ({"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"}, "", "no value"),
    ({"type": "object", "properties": {"": {"type": "string"}}}, "/properties", "empty property name"),
    ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(101)}}, "/properties", "optional"),
    ({"enum": ["x" * 70_000]}, "", "characters"),
    ({"type": "integer", "frobnicate": 1}, "/frobnicate", "unknown keyword"),
    ({"type": "object", "properties": {"a": False}}, "/properties/a", "must be an object"),
]


@pytest.mark.parametrize(("schema", "path", "words"), REFUSED, ids=[json.dumps(r[0])[:60] for r in REFUSED])
def test_a_schema_the_grammar_cannot_enforce_is_refused_and_nothing_queued(
    parent: SyncLlamaParent, schema: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(LlamaSchemaError, match=words) as caught:
        parent.send_prompt(ASK, json_schema=schema)
    assert caught.value.path.startswith(path)
    assert isinstance(caught.value, ValueError)
    assert parent.queue_length == 0 and not parent.is_generating


def test_a_schema_nested_too_deeply_is_refused(parent: SyncLlamaParent) -> None:
    deep: dict[str, Any] = {"type": "object"}
    inner = deep
    for _ in range(3000):
        inner["properties"] = {"a": {"type": "object"}}
        inner = inner["properties"]["a"]
    with pytest.raises(LlamaSchemaError, match="nested too deeply"):
        parent.send_prompt(ASK, json_schema=deep)


def test_a_schema_that_is_not_json_is_refused(parent: SyncLlamaParent) -> None:
    with pytest.raises(LlamaSchemaError, match="not JSON"):
        parent.send_prompt(ASK, json_schema={"type": "object", "default": object()})
    with pytest.raises(LlamaSchemaError, match="must be an object"):
        parent.send_prompt(ASK, json_schema=["type", "object"])  # type: ignore[arg-type]
