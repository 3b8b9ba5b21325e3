"""Tool calls: OpenAI-style function specs, the grammar a call must follow, and the calls read back.

Two formats are known, each the one a family of chat templates shows:

- ``"hermes"`` (Hermes, Qwen 2.5, and our `CHATML_TOOLS_TEMPLATE`): each call
  is a JSON object with the function's ``name`` and its ``arguments``,
  between ``<tool_call>`` and ``</tool_call>`` lines, after whatever text
  the model writes first.
- ``"llama3"`` (Llama 3.1 to 3.3): the reply is the call itself, a JSON
  object with the ``name`` and its ``parameters``.

In both a call starts where the model writes its marker (``<tool_call>``,
or ``{"name"`` for Llama 3), and the grammar fixes the object's form:
``{"name": ...`` first, then the arguments.

- ``tool_choice="required"`` or a named function: the reply is a call from
  its first token.
- ``"auto"``: the model writes freely; once it writes the marker, the
  grammar takes over for the rest (the worker switches it on, see
  `Sampler.activate`), so a call it starts is always well formed.
- ``"none"``: the template still shows the tools, nothing is enforced, and
  nothing is read as a call.

A call's arguments follow the function's parameter schema through the same
checked conversion as `json_schema=` (`_schema`): a schema the grammar cannot
enforce is refused with `LlamaSchemaError`. `CallReader` reads a call while
it is written, for streams of argument deltas.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .._errors import LlamaSchemaError, LlamaValueError
from .._events import ToolCall, ToolCallDelta
from .schema import json_schema_grammar

# A ChatML template (SmolLM2's, as its own renders a conversation without tools) that shows the tools in
# the system turn, an assistant's calls as <tool_call> JSON and the results as <tool_response> user turns.
CHATML_TOOLS_TEMPLATE = """{%- if messages and messages[0].role == "system" -%}
  {%- set system_text = messages[0].content if messages[0].content is string else "" -%}
  {%- set rest = messages[1:] -%}
{%- else -%}
  {%- set system_text = "You are a helpful AI assistant named SmolLM, trained by Hugging Face" -%}
  {%- set rest = messages -%}
{%- endif -%}
{{- "<|im_start|>system\\n" + system_text -}}
{%- if tools is defined and tools -%}
  {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to help with the user's request. "
      "The available functions are listed as JSON signatures inside <tools></tools>:\\n<tools>" -}}
  {%- for t in tools -%}
    {{- "\\n" + ((t.function if t.function is defined else t) | tojson) -}}
  {%- endfor -%}
  {{- "\\n</tools>\\n\\nTo call a function, reply with one JSON object per call, each wrapped in "
      "<tool_call></tool_call> tags:\\n<tool_call>\\n"
      "{\\"name\\": \\"<function-name>\\", \\"arguments\\": <arguments-json-object>}\\n</tool_call>" -}}
{%- endif -%}
{{- "<|im_end|>\\n" -}}
{%- for m in rest -%}
  {%- set content = m.content if (m.content is defined and m.content is string) else "" -%}
  {%- if m.role == "tool" -%}
    {%- if loop.first or rest[loop.index0 - 1].role != "tool" -%}{{- "<|im_start|>user" -}}{%- endif -%}
    {{- "\\n<tool_response>\\n" + content + "\\n</tool_response>" -}}
    {%- if loop.last or rest[loop.index0 + 1].role != "tool" -%}{{- "<|im_end|>\\n" -}}{%- endif -%}
  {%- elif m.role == "assistant" and m.tool_calls is defined and m.tool_calls -%}
    {{- "<|im_start|>assistant\\n" + content -}}
    {%- for tc in m.tool_calls -%}
      {%- set f = tc.function if tc.function is defined else tc -%}
      {%- set args = f.arguments if f.arguments is string else (f.arguments | tojson) -%}
      {{- ("\\n" if (content or not loop.first) else "") + "<tool_call>\\n{\\"name\\": " + (f.name | tojson)
          + ", \\"arguments\\": " + args + "}\\n</tool_call>" -}}
    {%- endfor -%}
    {{- "<|im_end|>\\n" -}}
  {%- else -%}
    {{- "<|im_start|>" + m.role + "\\n" + content + "<|im_end|>\\n" -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- "<|im_start|>assistant\\n" -}}{%- endif -%}
"""

ToolFormat = Literal["hermes", "llama3"]
ToolChoice = Literal["auto", "required", "none"] | Mapping[str, Any]
Mode = Literal["auto", "required", "none"]
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class CallFormat:
    """How one family of templates writes a call (see the module's docstring)."""

    marker: str  # where a call starts in a reply
    key: str  # the arguments' key in the call's JSON object
    opening: str  # written before the JSON object ("" when the marker is the object's own start)
    closing: str  # written after it
    root: str  # GBNF of a whole call around the rule ``call``
    named: bool = False  # a call starts only where the marker is followed by one of the functions' names
    # Where a reply that goes on past its answer starts imitating the template's tool results; a conversation
    # with tools or results stops there (a small model wrote "<tool_response>" after half its final answers).
    stops: tuple[str, ...] = ()

    def markers(self, names: Sequence[str]) -> tuple[str, ...]:
        """What starts a call to one of `names` in a reply.

        Llama 3's marker, ``{"name"``, is plain JSON that a reply asked for
        JSON may well begin with; so there a call starts only with
        ``{"name": "<one of the functions>"``, as the grammar writes it.
        """
        if not self.named:
            return (self.marker,)
        return tuple(f"{self.marker}: {json.dumps(name)}" for name in names)


FORMATS: dict[str, CallFormat] = {
    "hermes": CallFormat(
        marker="<tool_call>",
        key="arguments",
        opening="<tool_call>\n",
        closing="\n</tool_call>",
        root='"<tool_call>" "\\n"? call "\\n"? "</tool_call>"',
        stops=("<tool_response>",),
    ),
    "llama3": CallFormat(marker='{"name"', key="parameters", opening="", closing="", root="call", named=True),
}


@dataclass(frozen=True)
class ToolPlan:
    """What one prompt with tools sends to the worker, in the format the model writes calls in."""

    specs_json: str  # the tools, for the chat template
    mode: Mode
    chosen: tuple[dict[str, Any], ...]  # the functions a call may name
    positions: tuple[int, ...] = ()  # where each chosen function is in the tools given (for errors)
    _grammars: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def names(self) -> list[str]:
        """The functions a call may name."""
        return [spec["function"]["name"] for spec in self.chosen]

    def grammar(self, format: str) -> str | None:
        """GBNF of one whole call, marker included (None for ``"none"``): the reply after the marker follows it."""
        if self.mode == "none":
            return None
        if format not in self._grammars:
            positions = self.positions or tuple(range(len(self.chosen)))
            self._grammars[format] = _call_grammar(list(self.chosen), FORMATS[format], positions)
        return self._grammars[format]


def plan(tools: object, tool_choice: object) -> ToolPlan:
    """Check `tools` and `tool_choice` and build the grammar; `LlamaValueError`/`LlamaSchemaError` name what is
    wrong (their ``param``: ``tools[1].function.name``, ``tools[0].function.parameters``, ``tool_choice``)."""
    specs = tool_specs(tools)
    mode, chosen = _choice(tool_choice, specs)
    specs_json = json.dumps([spec["function"] for spec in specs], ensure_ascii=False)
    positions = tuple(i for i, spec in enumerate(specs) if any(spec is c for c in chosen))
    tool_plan = ToolPlan(specs_json, mode, tuple(chosen), positions)
    try:
        tool_plan.grammar("hermes")  # refuses, now, parameters the grammar cannot enforce (in any format)
    except RecursionError:
        raise LlamaSchemaError("the parameters are nested too deeply", "tools", param="tools") from None
    return tool_plan


def tool_specs(tools: object) -> list[dict[str, Any]]:
    """`tools` as OpenAI specs ``{"type": "function", "function": {"name", "description"?, "parameters"}}``."""
    listed = not isinstance(tools, (str, bytes, Mapping)) and isinstance(tools, Sequence)
    if not listed or not tools:
        code = "invalid_value" if listed else "invalid_type"
        raise LlamaValueError("tools must be a non-empty list of function specs", param="tools", code=code)
    assert isinstance(tools, Sequence)
    specs, names = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise LlamaValueError(
                f"{where} must be a dict, got {type(tool).__name__}", param=where, code="invalid_type"
            )
        shape = f"{where} must be {{'type': 'function', 'function': {{...}}}}"
        if tool.get("type", "function") != "function":
            raise LlamaValueError(shape, param=f"{where}.type")
        function = tool.get("function", tool)
        if not isinstance(function, Mapping):
            raise LlamaValueError(shape, param=f"{where}.function", code="invalid_type")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            message = f"{where} needs a 'name' of 1-64 letters, digits, '_', '.' or '-', got {name!r}"
            raise LlamaValueError(message, param=f"{where}.function.name")
        if name in names:
            raise LlamaValueError(f"{where}: two tools are named {name!r}", param=f"{where}.function.name")
        names.add(name)
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object":
            message = f"{where}['function']['parameters'] must be an object's JSON schema (a dict)"
            raise LlamaValueError(message, param=f"{where}.function.parameters")
        entry: dict[str, Any] = {"name": name, "parameters": dict(parameters)}
        if isinstance(function.get("description"), str):
            entry["description"] = function["description"]
        specs.append({"type": "function", "function": entry})
    return specs


def _choice(tool_choice: object, specs: list[dict[str, Any]]) -> tuple[Mode, list[dict[str, Any]]]:
    for mode in ("auto", "required", "none"):
        if tool_choice == mode:
            return mode, specs
    if isinstance(tool_choice, Mapping):
        named = tool_choice.get("function", tool_choice)
        name = named.get("name") if isinstance(named, Mapping) else None
        chosen = [spec for spec in specs if spec["function"]["name"] == name]
        if chosen:
            return "required", chosen
        raise LlamaValueError(f"tool_choice names {name!r}, which is not one of the tools", param="tool_choice")
    message = f"tool_choice must be 'auto', 'required', 'none' or {{'name': ...}}, got {tool_choice!r}"
    raise LlamaValueError(message, param="tool_choice")


def _call_grammar(specs: list[dict[str, Any]], form: CallFormat, positions: Sequence[int]) -> str:
    """GBNF of one call in `form`: ``{"name": <one of the functions>, <key>: <its arguments>}``.

    The JSON object is written ``{"name": `` first, exactly: that is where a
    call's marker is found (Llama 3's names the function too). The name's and the arguments' rules
    come from the checked conversion of one schema with an alternative per
    function (rules ``alternative-I-name`` and ``alternative-I-<key>-kv``). `positions` says where each
    function is among the tools given, for a `LlamaSchemaError`'s ``param``.
    """
    options = []
    defs: dict[str, Any] = {}
    for i, spec in enumerate(specs):
        function = spec["function"]
        parameters = _hoist_defs(function["parameters"], f"t{i}-", defs, f"tools[{positions[i]}].function.parameters")
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, form.key: parameters},
                "required": ["name", form.key],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = {"anyOf": options}
    if defs:
        schema["$defs"] = defs
    try:
        grammar = json_schema_grammar(schema)
    except LlamaSchemaError as exc:
        exc.param = _parameters_at(exc.path, positions)
        raise
    rules = re.sub(r"^root ::=.*\n?", "", grammar, count=1, flags=re.MULTILINE)
    pairs = []
    for i in range(len(specs)):
        name, arguments = f"alternative-{i}-name", f"alternative-{i}-{form.key}-kv"
        for rule in (name, arguments):
            if not re.search(rf"^{re.escape(rule)} ::=", rules, re.MULTILINE):
                raise RuntimeError(f"the schema converter named its rules differently: no {rule}")
        pairs.append(f'{name} "," space {arguments}')
    call = '"{\\"name\\": " (' + " | ".join(pairs) + ') "}" space'
    return f"root ::= {form.root}\ncall ::= {call}\n{rules}"


def _parameters_at(path: str, positions: Sequence[int]) -> str:
    """The param of the tool parameters a path in `_call_grammar`'s schema is in (``tools`` if in none)."""
    found = re.match(r"/anyOf/(\d+)(?:/|$)|/\$defs/t(\d+)-", path)
    if found is None:
        return "tools"
    return f"tools[{positions[int(found[1] or found[2])]}].function.parameters"


def _hoist_defs(parameters: Mapping[str, Any], prefix: str, defs: dict[str, Any], where: str) -> Any:
    """`parameters` with its ``$defs`` moved into `defs` under `prefix` and its local refs rewritten to match."""
    own: dict[str, Any] = {}
    for key in ("definitions", "$defs"):
        found = parameters.get(key, {})
        if not isinstance(found, Mapping):
            raise LlamaSchemaError(f"{key} must be an object of schemas", f"{where}.{key}", param=where)
        own.update(found)

    def rewrite(node: Any) -> Any:
        if isinstance(node, list):
            return [rewrite(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = {k: rewrite(v) for k, v in node.items() if k not in ("$defs", "definitions")}
        ref = node.get("$ref")
        if isinstance(ref, str):
            match = re.fullmatch(r"#/(?:\$defs|definitions)/([^/]+)", ref)
            if match is None or match[1] not in own:
                message = f"only refs to its own $defs are supported in tool parameters, not {ref!r}"
                raise LlamaSchemaError(message, where, param=where)
            out["$ref"] = f"#/$defs/{prefix}{match[1]}"
        return out

    for name, definition in own.items():
        defs[f"{prefix}{name}"] = rewrite(definition)
    return rewrite(dict(parameters))


def _gbnf(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def parse_calls(call_text: str | None, format: str, ids: Sequence[str] = ()) -> tuple[ToolCall, ...]:
    """The calls in the text the model wrote from the first marker on (grammar-checked, so they parse).

    The i-th call gets ``ids[i]`` when there is one (the id its stream deltas had), a new id otherwise.
    """
    if not call_text:
        return ()
    form = FORMATS[format]
    calls: list[ToolCall] = []
    decoder = json.JSONDecoder()
    at = call_text.find(form.marker)
    while at >= 0:
        start = call_text.find("{", at)
        if start < 0:
            break
        try:  # the JSON object, whatever its strings hold (even "</tool_call>")
            body, end = decoder.raw_decode(call_text, start)
        except json.JSONDecodeError:
            break
        if isinstance(body, dict) and isinstance(body.get("name"), str) and isinstance(body.get(form.key), dict):
            call_id = ids[len(calls)] if len(calls) < len(ids) else new_call_id()
            calls.append(ToolCall(call_id, body["name"], body[form.key]))
        at = call_text.find(form.marker, end)
    return tuple(calls)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def render_calls(content: str, calls: Sequence[Mapping[str, Any]], format: str) -> str:
    """An assistant message's content with its tool calls written as the model writes them."""
    form = FORMATS[format]
    parts = [content] if content else []
    for call in calls:
        function = call.get("function", call)
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            arguments = json.loads(arguments) if arguments.strip() else {}
        body = json.dumps({"name": function.get("name"), form.key: arguments}, ensure_ascii=False, allow_nan=False)
        parts.append(f"{form.opening}{body}{form.closing}")
    return "\n".join(parts)


class CallReader:
    """Reads the calls of a reply while it is written: each call's name once it is whole, then its arguments.

    `feed` takes the reply's text from its first marker on, piece by piece,
    and returns the `ToolCallDelta`s that text completes. The arguments'
    JSON text is passed on as written, up to the brace that closes it.
    """

    def __init__(self, format: str) -> None:
        key = re.escape(json.dumps(FORMATS[format].key))
        self._head = re.compile(r'\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*' + key + r"\s*:\s*")
        self._text = ""
        self._at = 0  # where reading goes on
        self.ids: list[str] = []  # of the calls begun, in order
        self._depth = 0  # inside a call's arguments while > 0
        self._in_string = False
        self._escaped = False

    def feed(self, text: str) -> list[ToolCallDelta]:
        self._text += text
        deltas: list[ToolCallDelta] = []
        while self._at < len(self._text):
            if self._depth == 0:
                head = self._head.search(self._text, self._at)
                if head is None or head.end() == len(self._text):  # not whole yet (or no call at all)
                    break
                self.ids.append(new_call_id())
                deltas.append(ToolCallDelta(len(self.ids) - 1, self.ids[-1], json.loads(head[1]), ""))
                self._at = head.end()
                if self._text[self._at] != "{":  # arguments are an object; anything else is not read
                    break
            start = self._at
            self._at = self._scan(start)
            deltas.append(ToolCallDelta(len(self.ids) - 1, self.ids[-1], "", self._text[start : self._at]))
        return [d for d in deltas if d.name or d.arguments]

    def _scan(self, at: int) -> int:
        """Where the arguments' text read from `at` ends: at the closing brace, or at the end of the text."""
        text = self._text
        for i in range(at, len(text)):
            char = text[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        return len(text)


def openai_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Calls as they are kept in `messages` (OpenAI's assistant ``tool_calls``)."""
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
        for c in calls
    ]
