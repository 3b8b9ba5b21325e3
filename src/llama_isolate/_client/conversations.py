"""Chat histories: the parent's own conversation and each scope's, and the turns of prompts.

A prompt's user turn joins its conversation when the prompt starts, and its
reply when it ends (a failed prompt leaves the conversation as it was). The
history a prompt starts from is checked first: callers may edit `messages`
between prompts, and a malformed entry must fail that prompt with a message
naming it, never reach the worker.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import _protocol as protocol
from .._checks import check_history
from .._events import ToolCall
from .._grammar.tools import FORMATS, ToolFormat, openai_calls, render_calls
from .queue import Conversation, PromptRecord


class Conversations:
    """The histories prompts are sent with, and the bookkeeping of their turns."""

    def __init__(self) -> None:
        self.default: list[dict[str, Any]] = []
        """The parent's own conversation (`LlamaParent.messages`)."""

    def history(self, scope: Conversation | None) -> list[dict[str, Any]]:
        """The conversation of `scope` (the parent's own for None)."""
        return self.default if scope is None else scope.messages

    def check(self, scope: Conversation | None) -> None:
        """Raise `LlamaValueError` naming the field if the conversation holds a malformed message.

        A scope's history is named ``messages`` as the parent's is: it is the scope's `messages`, the
        caller knows which scope it sent to, and a failed prompt's event carries the scope's id.
        """
        check_history(self.history(scope))

    def open_turn(self, record: PromptRecord, tool_format: ToolFormat) -> protocol.Submit:
        """Append the prompt's user turn and return the command that starts it; `LlamaValueError` if malformed.

        Tool calls, the reply's and those in the history, are in `tool_format`, the model's.
        """
        self.check(record.scope)
        history = self.history(record.scope)
        record.history_len = len(history)
        turn: dict[str, Any] = {"role": "user", "content": record.text}
        if record.tool_call_id is not None:
            turn = {"role": "tool", "tool_call_id": record.tool_call_id, "content": record.text}
        if record.images:
            turn["images"] = record.images
        history.append(turn)
        return _submit(record, history, tool_format)

    def settle(self, record: PromptRecord, text: str, *, failed: bool, calls: tuple[ToolCall, ...] = ()) -> None:
        """A reply (and its tool calls) joins the conversation; a failed prompt takes its user turn back out."""
        if record.history_len is None:
            return  # never started: its user turn was never added
        history = self.history(record.scope)
        if not failed:
            reply: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                reply["tool_calls"] = openai_calls(calls)
            history.append(reply)
            return
        last = history[-1] if len(history) == record.history_len + 1 else None
        if isinstance(last, dict) and last.get("content") == record.text:
            history.pop()


def turns_of(messages: object, tool_format: ToolFormat) -> tuple[tuple[str, str], ...]:
    """`messages` (OpenAI-style dicts) as the worker's turns; `LlamaValueError` names a malformed one."""
    history = check_history(list(messages) if isinstance(messages, tuple) else messages)
    return _turns(history, tool_format)


def _submit(record: PromptRecord, history: list[dict[str, Any]], tool_format: ToolFormat) -> protocol.Submit:
    """The command that starts `record`, with its whole conversation (and its images, if any)."""
    turns = _turns(history, tool_format)
    images: tuple[tuple[tuple[str, bytes], ...], ...] = ()
    if any(m.get("images") for m in history):
        images = tuple(tuple((i.name, i.data) for i in m.get("images") or ()) for m in history)
    tools = record.tools
    sampler, grammar = record.sampler, None if tools is None else tools.grammar(tool_format)
    if tools is not None and tools.mode == "required":  # the reply is a call from its first token
        sampler = dataclasses.replace(sampler, grammar=grammar)
    required = tools is not None and tools.mode == "required"
    if not required and (tools is not None or any(m.get("role") == "tool" for m in history)):
        extra = tuple(s for s in FORMATS[tool_format].stops if s not in sampler.stop)
        sampler = dataclasses.replace(sampler, stop=sampler.stop + extra) if extra else sampler
    return protocol.Submit(
        record.id,
        record.scope_key,
        turns,
        sampler,
        record.max_tokens,
        images,
        record.raw,
        record.logprobs,
        tools=None if tools is None else tools.specs_json,
        tool_markers=() if tools is None or tools.mode == "none" else FORMATS[tool_format].markers(tools.names),
        tool_grammar=grammar if tools is not None and tools.mode == "auto" else None,
        n=record.n,
        trim=record.trim,
    )


def _turns(history: list[dict[str, Any]], tool_format: ToolFormat) -> tuple[tuple[str, str], ...]:
    """Checked messages as (role, text) pairs for the template."""
    return tuple((str(m["role"]), _content(m, tool_format)) for m in history)


def _content(message: dict[str, Any], tool_format: ToolFormat) -> str:
    """A message's text for the template; an assistant's tool calls are written in, as the model writes them."""
    calls = message.get("tool_calls")
    return render_calls(str(message["content"]), calls, tool_format) if calls else str(message["content"])
