"""JSON schemas -> GBNF grammars that only ever produce valid instances (fail closed).

llama-cpp-python's converter (`llama_cpp.llama_grammar.json_schema_to_gbnf`)
turns a schema into a grammar for llama.cpp's grammar sampler, but it drops
what it cannot express without a word: numeric bounds, `uniqueItems`, `not`,
the second half of a `oneOf`'s promise, the siblings of a `$ref`... A grammar
built from such a schema lets the model write JSON that does not validate.

So a schema is checked first, keyword by keyword, against the subset the
converter expresses soundly (every string the grammar accepts validates),
and anything else is refused with `LlamaSchemaError` naming where and why.
The checked schema is normalized on the way (annotations left out, `\\d` in
patterns spelled as a class the grammar reads, ...) and only then converted.

The converter's module has no dependency on the rest of llama-cpp-python; it
is loaded on its own, so the parent process never loads llama.cpp's library.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from .._errors import LlamaSchemaError
from .pattern import translate

__all__ = ["JSON_OBJECT_SCHEMA", "json_schema_grammar"]

JSON_OBJECT_SCHEMA: Mapping[str, Any] = {"type": "object"}

# Keywords that only describe; they are left out before conversion.
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "discriminator",
        "strict",
    }
)
TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
_DEFS = ("$defs", "definitions")
# The conversion runs where send_prompt is called (the event loop): a bound on its work.
MAX_SCHEMA_CHARS = 64 * 1024
MAX_OPTIONAL = 100  # optional properties of one object
MAX_REPETITIONS = 2000  # llama.cpp's MAX_REPETITION_THRESHOLD: the most a grammar may repeat an item
_FAMILIES = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "prefixItems", "minItems", "maxItems", "additionalItems"}),
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
}
# What the converter would silently drop or get wrong, and why it matters.
REFUSED = {
    "minimum": "numeric bounds are not enforced by the grammar",
    "maximum": "numeric bounds are not enforced by the grammar",
    "exclusiveMinimum": "numeric bounds are not enforced by the grammar",
    "exclusiveMaximum": "numeric bounds are not enforced by the grammar",
    "multipleOf": "multipleOf is not enforced by the grammar",
    "uniqueItems": "the grammar cannot keep array items distinct",
    "contains": "contains is not enforced by the grammar",
    "minContains": "contains is not enforced by the grammar",
    "maxContains": "contains is not enforced by the grammar",
    "oneOf": "an output could match several alternatives (oneOf wants exactly one); use anyOf",
    "allOf": "allOf is not expressed exactly; merge the schemas into one",
    "not": "not is not enforced by the grammar",
    "if": "if/then/else is not enforced by the grammar",
    "then": "if/then/else is not enforced by the grammar",
    "else": "if/then/else is not enforced by the grammar",
    "patternProperties": "patternProperties is not enforced by the grammar",
    "propertyNames": "propertyNames is not enforced by the grammar",
    "minProperties": "minProperties/maxProperties are not enforced by the grammar",
    "maxProperties": "minProperties/maxProperties are not enforced by the grammar",
    "dependentRequired": "dependencies between properties are not enforced by the grammar",
    "dependentSchemas": "dependencies between properties are not enforced by the grammar",
    "dependencies": "dependencies between properties are not enforced by the grammar",
    "unevaluatedProperties": "unevaluated* keywords are not enforced by the grammar",
    "unevaluatedItems": "unevaluated* keywords are not enforced by the grammar",
    "$dynamicRef": "only local $ref is supported",
    "$recursiveRef": "only local $ref is supported",
    "$anchor": "only local $ref with a JSON pointer is supported",
    "contentEncoding": "content* keywords are not enforced by the grammar",
    "contentMediaType": "content* keywords are not enforced by the grammar",
    "contentSchema": "content* keywords are not enforced by the grammar",
}
_KNOWN = frozenset({"type", "enum", "const", "$ref", "anyOf"}).union(*_FAMILIES.values(), REFUSED)


def json_schema_grammar(schema: Mapping[str, Any]) -> str:
    """A GBNF grammar (root rule ``root``) whose every output is JSON valid against `schema`.

    Raises:
        LlamaSchemaError: the schema uses something the grammar cannot
            enforce, or is malformed; `path` is a JSON pointer to the place.

    Example::

        grammar = json_schema_grammar({"type": "object", "properties": {"a": {"type": "integer"}}})
    """
    if not isinstance(schema, Mapping):
        raise LlamaSchemaError(f"a JSON schema must be an object (a dict), not {type(schema).__name__}", "")
    try:
        text = json.dumps(schema, allow_nan=False)  # keys in their order: the output writes properties so
    except RecursionError:
        raise LlamaSchemaError("the schema is nested too deeply", "") from None
    except (TypeError, ValueError) as exc:
        raise LlamaSchemaError(f"the schema is not JSON: {exc}", "") from exc
    if len(text) > MAX_SCHEMA_CHARS:
        raise LlamaSchemaError(f"the schema has {len(text)} characters of JSON; {MAX_SCHEMA_CHARS} at most", "")
    try:
        return _grammar(text)
    except RecursionError:
        raise LlamaSchemaError("the schema is nested too deeply", "") from None


@functools.lru_cache(maxsize=256)
def _grammar(text: str) -> str:
    root = _Checker(json.loads(text)).run()
    try:
        return str(_converter().json_schema_to_gbnf(json.dumps(root)))
    except (AssertionError, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise LlamaSchemaError(f"the schema cannot be turned into a grammar: {exc}", "") from exc


@functools.cache
def _converter() -> ModuleType:
    """llama-cpp-python's `llama_grammar` module, loaded without the package (and its C library)."""
    package = importlib.util.find_spec("llama_cpp")
    if package is None or not package.submodule_search_locations:
        raise LlamaSchemaError("llama-cpp-python is not installed: JSON schemas need its converter", "")
    location = next(iter(package.submodule_search_locations))
    spec = importlib.util.spec_from_file_location("llama_isolate._llama_grammar", f"{location}/llama_grammar.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Its string characters are `[^"\\]`, raw control characters included, which
    # JSON forbids (a newline inside a string broke `json.loads`): JSON's own rule.
    module.PRIMITIVE_RULES["char"] = module.BuiltinRule(_JSON_CHAR, [])
    # Its literals (property names, const and enum values, as JSON text) escape
    # quotes and newlines for the grammar but not backslashes: JSON's own
    # escapes (\n, \\, \ud83d...) then reached the grammar as its escapes, and
    # the model wrote raw control characters or lone surrogates (invalid JSON).
    escapes = {"\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\"}
    setattr(module, "GRAMMAR_LITERAL_ESCAPE_RE", re.compile(r'[\r\n"\\]'))  # noqa: B010
    setattr(module, "GRAMMAR_LITERAL_ESCAPES", escapes)  # noqa: B010
    # It spells a repetition as nested optional groups, one per item: llama.cpp's
    # parser gave up on a maxLength of 2000. GBNF's own {m,n} is expanded by
    # llama.cpp instead (up to MAX_REPETITIONS).
    setattr(module, "_build_repetition", _repetition)  # noqa: B010 (a module attribute mypy cannot see)
    return module


def _repetition(
    item_rule: str,
    min_items: int,
    max_items: int | None,
    separator_rule: str | None = None,
    item_rule_is_literal: bool = False,
) -> str:
    """The converter's repetitions in GBNF's {m,n} syntax: `item_rule` min..max times, with separators."""
    if max_items == 0:
        return ""
    upper = "" if max_items is None else str(max_items)
    if not separator_rule:
        return f"({item_rule}){{{min_items},{upper}}}"
    rest = "" if max_items is None else str(max_items - 1)
    sequence = f"{item_rule} ({separator_rule} {item_rule}){{{max(min_items - 1, 0)},{rest}}}"
    return sequence if min_items > 0 else f"({sequence})?"


_JSON_CHAR = r'[^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'


def _pointer(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


class _Checker:
    """Walks a schema from its root (and into what `$ref` reaches), refusing, and returns a normalized copy."""

    def __init__(self, root: Any) -> None:
        self._root = root
        self._reached: dict[str, dict[str, Any]] = {}  # $ref -> its target, normalized

    def run(self) -> dict[str, Any]:
        out = self.node(self._root, "")
        # The converter resolves "#/$defs/..." against the root it is given: the
        # definitions a $ref reached go back where they were, normalized.
        for ref, target in sorted(self._reached.items()):
            *parents, last = ref[2:].split("/")
            holder = out
            for part in parents:
                holder = holder.setdefault(part, {})
            holder[last] = target
        if "$ref" in out:  # the converter would not look into the definitions beside a $ref at the root
            out["anyOf"] = [{"$ref": out.pop("$ref")}]
        return out

    def node(self, schema: Any, path: str) -> dict[str, Any]:
        if schema is True:
            return {}
        if not isinstance(schema, dict):
            raise LlamaSchemaError("a schema here must be an object (`false` and other values are not supported)", path)
        keys = {k: v for k, v in schema.items() if k not in ANNOTATIONS and k not in _DEFS}
        if keys.get("uniqueItems") is False:  # the default: asks nothing
            del keys["uniqueItems"]
        for key in keys:
            if key in REFUSED:
                raise LlamaSchemaError(f"'{key}' is not supported: {REFUSED[key]}", _pointer(path, key))
            if key not in _KNOWN:
                raise LlamaSchemaError(f"unknown keyword '{key}'", _pointer(path, key))
        special = (("$ref", self._ref), ("anyOf", self._any_of), ("enum", self._values), ("const", self._values))
        for word, check in special:
            if word in keys:
                return check(keys, path)
        if isinstance(keys.get("type"), list):
            return self._type_list(keys, path)
        return self._typed(keys, path)

    def _typed(self, keys: dict[str, Any], path: str) -> dict[str, Any]:
        kind = keys.get("type")
        if kind is not None and kind not in TYPES:
            raise LlamaSchemaError(f"unknown type {kind!r} (one of {', '.join(TYPES)})", _pointer(path, "type"))
        families = [name for name, words in _FAMILIES.items() if words & keys.keys()]
        if kind is None and len(families) > 1:
            raise LlamaSchemaError(f"keywords of several types ({', '.join(families)}) and no 'type'", path)
        kind = kind or (families[0] if families else None)
        check: Callable[[dict[str, Any], str], dict[str, Any]] | None = {
            "object": self._object,
            "array": self._array,
            "string": self._string,
        }.get(kind or "")
        if check is None:
            return {"type": kind} if kind else {}
        return check(keys, path)

    def _ref(self, keys: dict[str, Any], path: str) -> dict[str, Any]:
        ref = keys["$ref"]
        if len(keys) > 1:
            others = ", ".join(sorted(set(keys) - {"$ref"}))
            raise LlamaSchemaError(f"keywords beside $ref ({others}) would be ignored; move them", path)
        if not isinstance(ref, str) or not ref.startswith("#/") or "~" in ref or "%" in ref:
            raise LlamaSchemaError(f"only local $refs like '#/$defs/Name' are supported, not {ref!r}", path)
        target = self._resolve(ref, _pointer(path, "$ref"))
        chain = [ref]
        while (
            isinstance(target, dict) and isinstance(target.get("$ref"), str) and set(target) <= {"$ref"} | ANNOTATIONS
        ):
            if target["$ref"] in chain:
                raise LlamaSchemaError(f"the $refs {' -> '.join([*chain, target['$ref']])} stand for no value", path)
            chain.append(target["$ref"])
            target = self._resolve(target["$ref"], _pointer(path, "$ref"))
        target = self._resolve(ref, _pointer(path, "$ref"))
        if ref not in self._reached:
            self._reached[ref] = {}  # a recursive definition refers to itself: checked once
            self._reached[ref] = self.node(target, ref[1:])
        return {"$ref": ref}

    def _resolve(self, ref: str, path: str) -> Any:
        target: Any = self._root
        for part in ref[2:].split("/"):
            if not isinstance(target, dict) or part not in target:
                raise LlamaSchemaError(f"$ref {ref!r} points at nothing", path)
            target = target[part]
        return target

    def _any_of(self, keys: dict[str, Any], path: str) -> dict[str, Any]:
        options = keys["anyOf"]
        if len(keys) > 1:
            others = ", ".join(sorted(set(keys) - {"anyOf"}))
            raise LlamaSchemaError(f"keywords beside anyOf ({others}) would be ignored; move them inside", path)
        if not isinstance(options, list) or not options:
            raise LlamaSchemaError("anyOf must be a non-empty list of schemas", _pointer(path, "anyOf"))
        return {"anyOf": [self.node(o, _pointer(_pointer(path, "anyOf"), i)) for i, o in enumerate(options)]}

    def _values(self, keys: dict[str, Any], path: str) -> dict[str, Any]:
        if "enum" in keys and "const" in keys:
            raise LlamaSchemaError("enum and const together", path)
        word = "enum" if "enum" in keys else "const"
        values = keys["enum"] if word == "enum" else [keys["const"]]
        if word == "enum" and (not isinstance(values, list) or not values):
            raise LlamaSchemaError("enum must be a non-empty list", _pointer(path, "enum"))
        others = set(keys) - {word, "type"}
        if others:
            raise LlamaSchemaError(f"keywords beside {word} ({', '.join(sorted(others))}) would be ignored", path)
        kind = keys.get("type")
        kinds = kind if isinstance(kind, list) else [kind] if kind is not None else None
        for i, value in enumerate(values):
            if kinds is not None and not any(_is(value, k) for k in kinds):
                where = _pointer(_pointer(path, "enum"), i) if word == "enum" else _pointer(path, "const")
                raise LlamaSchemaError(f"{value!r} is not of type {kind!r}", where)
        return {word: keys[word]}

    def _type_list(self, keys: dict[str, Any], path: str) -> dict[str, Any]:
        kinds = keys["type"]
        if len(keys) > 1:
            others = ", ".join(sorted(set(keys) - {"type"}))
            raise LlamaSchemaError(
                f"a list of types with other keywords ({others}): use anyOf with one schema per type", path
            )
        if not kinds or len(set(map(str, kinds))) != len(kinds) or any(k not in TYPES for k in kinds):
            raise LlamaSchemaError(f"type must list distinct types of {', '.join(TYPES)}", _pointer(path, "type"))
        return {"anyOf": [{"type": k} for k in kinds]}

    def _object(self, keys: dict[str, Any], path: str) -> dict[str, Any]:
        properties = keys.get("properties", {})
        if not isinstance(properties, dict):
            raise LlamaSchemaError("properties must be an object", _pointer(path, "properties"))
        required = keys.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise LlamaSchemaError("required must be a list of names", _pointer(path, "required"))
        for name in required:
            if name not in properties:
                raise LlamaSchemaError(
                    f"required property '{name}' has no schema in properties", _pointer(path, "required")
                )
        optional = len(set(properties) - set(required))
        if optional > MAX_OPTIONAL:
            raise LlamaSchemaError(
                f"{optional} optional properties; at most {MAX_OPTIONAL} (the grammar grows with their square): "
                "make some required",
                _pointer(path, "properties"),
            )
        if "" in properties:
            raise LlamaSchemaError("an empty property name is not supported", _pointer(path, "properties"))
        out: dict[str, Any] = {"type": "object"}
        if properties:
            where = _pointer(path, "properties")
            out["properties"] = {n: self.node(s, _pointer(where, n)) for n, s in properties.items()}
        if required:
            out["required"] = list(dict.fromkeys(required))
        # Declared properties, even none, are all that is written (valid: the others are optional).
        extra = keys.get("additionalProperties", None if "properties" in keys else True)
        if extra is False or extra is None:
            out["additionalProperties"] = False
        elif extra is not None:
            if properties:
                raise LlamaSchemaError(
                    "additionalProperties beside properties is not supported: an extra property could take a "
                    "declared one's name; set it to false or leave it out (only the declared ones are written)",
                    _pointer(path, "additionalProperties"),
                )
            if extra is not True:
                out["additionalProperties"] = self.node(extra, _pointer(path, "additionalProperties"))
        return out

    def _array(self, keys: dict[str, Any], path: str) -> dict[str, Any]:
        low, high = _bounds(keys, "minItems", "maxItems", path)
        items, prefix = keys.get("items"), keys.get("prefixItems")
        if isinstance(items, list):  # draft 4's tuples
            items, prefix = None, items
        if prefix is not None:
            if items is not None or keys.get("additionalItems", False) is not False:
                raise LlamaSchemaError("items after prefixItems are not supported", path)
            if not isinstance(prefix, list) or not prefix:
                raise LlamaSchemaError("prefixItems must be a non-empty list", _pointer(path, "prefixItems"))
            if len(prefix) < low or (high is not None and len(prefix) > high):
                raise LlamaSchemaError(f"a {len(prefix)}-item tuple cannot meet minItems/maxItems", path)
            where = _pointer(path, "prefixItems")
            return {"type": "array", "prefixItems": [self.node(s, _pointer(where, i)) for i, s in enumerate(prefix)]}
        if "additionalItems" in keys:
            raise LlamaSchemaError("additionalItems without a tuple means nothing here", path)
        out: dict[str, Any] = {"type": "array"}
        out["items"] = self.node(True if items is None else items, _pointer(path, "items"))
        if low:
            out["minItems"] = low
        if high is not None:
            out["maxItems"] = high
        return out

    def _string(self, keys: dict[str, Any], path: str) -> dict[str, Any]:
        low, high = _bounds(keys, "minLength", "maxLength", path)
        constraints: list[str] = [k for k in ("pattern", "format") if k in keys]
        constraints += ["minLength/maxLength"] if "minLength" in keys or "maxLength" in keys else []
        if len(constraints) > 1:
            raise LlamaSchemaError(f"only one of {' and '.join(constraints)} can be enforced at once", path)
        if "pattern" in keys:
            return {"type": "string", "pattern": translate(keys["pattern"], _pointer(path, "pattern"))}
        if "format" in keys:
            if keys["format"] not in FORMATS:
                raise LlamaSchemaError(
                    f"format {keys['format']!r} is not supported (only {', '.join(sorted(FORMATS))}); "
                    "use a pattern instead",
                    _pointer(path, "format"),
                )
            return {"type": "string", "format": keys["format"]}
        out: dict[str, Any] = {"type": "string"}
        if low:
            out["minLength"] = low
        if high is not None:
            out["maxLength"] = high
        return out


def _bounds(keys: dict[str, Any], low_key: str, high_key: str, path: str) -> tuple[int, int | None]:
    low, high = keys.get(low_key, 0), keys.get(high_key)
    for key, value in ((low_key, low), (high_key, high)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise LlamaSchemaError(f"{key} must be a non-negative integer", _pointer(path, key))
    if high is not None and low > high:
        raise LlamaSchemaError(f"{low_key} is more than {high_key}: nothing can match", path)
    for key, value in ((low_key, low), (high_key, high)):
        if value is not None and value > MAX_REPETITIONS:
            raise LlamaSchemaError(
                f"{key} above {MAX_REPETITIONS} cannot be enforced (llama.cpp's grammar caps repetitions there)",
                _pointer(path, key),
            )
    return low, high


def _is(value: Any, kind: str) -> bool:
    """True if the JSON value is of JSON Schema type `kind`."""
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    return {
        "string": isinstance(value, str),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "null": value is None,
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
    }.get(kind, False)
