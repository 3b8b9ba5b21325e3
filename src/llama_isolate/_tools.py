"""Tool calls: OpenAI-style function specs, the grammar a call must follow, and the calls read back.

The format is Hermes's (also Qwen 2.5's), the one a chat template shows when
it mentions ``<tool_call>``: each call is a JSON object with the function's
``name`` and its ``arguments``, between ``<tool_call>`` and ``</tool_call>``
lines, after whatever text the model writes first.

- ``tool_choice="required"`` or a named function: the reply is a call from
  its first token (the grammar covers the markers too).
- ``"auto"``: the model writes freely; once it writes ``<tool_call>`` the
  grammar takes over for the rest (the worker switches it on, see
  `Sampler.activate`), so a call it starts is always well formed.
- ``"none"``: the template still shows the tools, nothing is enforced, and
  nothing is read as a call.

A call's arguments follow the function's parameter schema through the same
checked conversion as `json_schema=` (`_schema`): a schema the grammar cannot
enforce is refused with `LlamaSchemaError`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import LlamaSchemaError
from ._events import ToolCall
from ._schema import json_schema_grammar

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

MARKER = "<tool_call>"
END = "</tool_call>"
ToolChoice = Literal["auto", "required", "none"] | Mapping[str, Any]
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class ToolPlan:
    """What one prompt with tools sends to the worker."""

    specs_json: str  # the tools, for the chat template
    mode: Literal["auto", "required", "none"]
    grammar: str | None  # required: the whole reply; auto: what follows the marker
    marker: str | None  # where a call starts in the text (None for "none")


def plan(tools: object, tool_choice: object) -> ToolPlan:
    """Check `tools` and `tool_choice` and build the grammar; `ValueError`/`LlamaSchemaError` name what is wrong."""
    specs = tool_specs(tools)
    mode, chosen = _choice(tool_choice, specs)
    specs_json = json.dumps([spec["function"] for spec in specs], ensure_ascii=False)
    if mode == "none":
        return ToolPlan(specs_json, mode, None, None)
    # One call per reply: after it only the end of the reply may come.
    after_marker = f'"\\n"? call "\\n"? "{_gbnf(END)}"'
    start = f'"{_gbnf(MARKER)}" ' if mode == "required" else ""
    grammar = f"root ::= {start}{after_marker}\n{_call_rules(chosen)}"
    return ToolPlan(specs_json, mode, grammar, MARKER)


def tool_specs(tools: object) -> list[dict[str, Any]]:
    """`tools` as OpenAI specs ``{"type": "function", "function": {"name", "description"?, "parameters"}}``."""
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence) or not tools:
        raise ValueError("tools must be a non-empty list of function specs")
    specs, names = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(tool).__name__}")
        function = tool.get("function", tool) if tool.get("type", "function") == "function" else None
        if not isinstance(function, Mapping):
            raise ValueError(f"{where} must be {{'type': 'function', 'function': {{...}}}}")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{where} needs a 'name' of 1-64 letters, digits, '_', '.' or '-', got {name!r}")
        if name in names:
            raise ValueError(f"{where}: two tools are named {name!r}")
        names.add(name)
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object":
            raise ValueError(f"{where}['function']['parameters'] must be an object's JSON schema (a dict)")
        entry: dict[str, Any] = {"name": name, "parameters": dict(parameters)}
        if isinstance(function.get("description"), str):
            entry["description"] = function["description"]
        specs.append({"type": "function", "function": entry})
    return specs


Mode = Literal["auto", "required", "none"]


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
        raise ValueError(f"tool_choice names {name!r}, which is not one of the tools")
    raise ValueError(f"tool_choice must be 'auto', 'required', 'none' or {{'name': ...}}, got {tool_choice!r}")


def _call_rules(specs: list[dict[str, Any]]) -> str:
    """GBNF for one call's JSON (rule ``call``): one of the functions, with arguments valid for it."""
    options = []
    defs: dict[str, Any] = {}
    for i, spec in enumerate(specs):
        function = spec["function"]
        parameters = _hoist_defs(function["parameters"], f"t{i}-", defs, f"tools[{i}].function.parameters")
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = {"anyOf": options}
    if defs:
        schema["$defs"] = defs
    grammar = json_schema_grammar(schema)
    return re.sub(r"^root ::=", "call ::=", grammar, count=1, flags=re.MULTILINE)


def _hoist_defs(parameters: Mapping[str, Any], prefix: str, defs: dict[str, Any], where: str) -> Any:
    """`parameters` with its ``$defs`` moved into `defs` under `prefix` and its local refs rewritten to match."""
    own: dict[str, Any] = {}
    for key in ("definitions", "$defs"):
        found = parameters.get(key, {})
        if not isinstance(found, Mapping):
            raise LlamaSchemaError(f"{key} must be an object of schemas", f"{where}.{key}")
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
                raise LlamaSchemaError(message, where)
            out["$ref"] = f"#/$defs/{prefix}{match[1]}"
        return out

    for name, definition in own.items():
        defs[f"{prefix}{name}"] = rewrite(definition)
    return rewrite(dict(parameters))


def _gbnf(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def parse_calls(call_text: str | None) -> tuple[ToolCall, ...]:
    """The calls in the text the model wrote from the first marker on (grammar-checked, so they parse)."""
    if not call_text:
        return ()
    calls = []
    decoder = json.JSONDecoder()
    at = call_text.find(MARKER)
    while at >= 0:
        start = call_text.find("{", at + len(MARKER))
        if start < 0:
            break
        try:  # the JSON object, whatever its strings hold (even "</tool_call>")
            body, end = decoder.raw_decode(call_text, start)
        except json.JSONDecodeError:
            break
        if isinstance(body, dict) and isinstance(body.get("name"), str) and isinstance(body.get("arguments"), dict):
            calls.append(ToolCall(f"call_{uuid.uuid4().hex[:24]}", body["name"], body["arguments"]))
        at = call_text.find(MARKER, end)
    return tuple(calls)


def render_calls(content: str, calls: Sequence[Mapping[str, Any]]) -> str:
    """An assistant message's content with its tool calls written as the model writes them."""
    parts = [content] if content else []
    for call in calls:
        function = call.get("function", call)
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            arguments = json.loads(arguments) if arguments.strip() else {}
        body = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
        parts.append(f"{MARKER}\n{body}\n{END}")
    return "\n".join(parts)


def openai_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Calls as they are kept in `messages` (OpenAI's assistant ``tool_calls``)."""
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
        for c in calls
    ]
