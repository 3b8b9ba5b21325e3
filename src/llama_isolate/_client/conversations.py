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
from .._checks import check_history, plain
from .._errors import LlamaValueError
from .._events import ToolCall
from .._grammar.tools import FORMATS, ToolFormat, openai_calls, render_calls
from .._options import PromptOptions
from .queue import Conversation, PromptRecord


class Conversations:
    """The turns of prompts in the conversations they join: a scope's `messages`, or a `generate` call's own."""

    @staticmethod
    def of(record: PromptRecord) -> list[dict[str, Any]]:
        """The conversation `record` joins: its own (a `generate` call's), else its scope's."""
        if record.history is not None:
            return record.history
        assert record.scope is not None, "a prompt has a scope or a conversation of its own"
        return record.scope.messages

    @staticmethod
    def check(scope: Conversation | None, history: list[dict[str, Any]] | None = None) -> None:
        """Raise `LlamaValueError` naming the field if the conversation (`history`, else the scope's) is malformed.

        A scope's history is named ``messages`` as any other is: it is the scope's `messages`, the caller knows
        which scope it sent to, and a failed prompt's event carries the scope's id.
        """
        if history is not None or scope is None:
            check_history([] if history is None else history)
        else:
            check_history(scope.messages)

    def check_record(self, record: PromptRecord) -> None:
        """`check` for the conversation `record` joins."""
        self.check(record.scope, record.history)

    def open_turn(self, record: PromptRecord, tool_format: ToolFormat) -> protocol.Submit:
        """Append the prompt's user turn and return the command that starts it; `LlamaValueError` if malformed.

        Tool calls, the reply's and those in the history, are in `tool_format`, the model's.
        """
        self.check_record(record)
        history = self.of(record)
        record.history_len = len(history)
        turn: dict[str, Any] = {"role": "user", "content": record.text}
        if record.options.tool_call_id is not None:
            turn = {"role": "tool", "tool_call_id": record.options.tool_call_id, "content": record.text}
        if record.options.images:
            turn["images"] = record.options.images
        history.append(turn)
        return _submit(record, history, tool_format)

    def settle(self, record: PromptRecord, text: str, *, failed: bool, calls: tuple[ToolCall, ...] = ()) -> None:
        """A reply (and its tool calls) joins the conversation; a failed prompt takes its user turn back out."""
        if record.history_len is None:
            return  # never started: its user turn was never added
        history = self.of(record)
        if not failed:
            reply: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                reply["tool_calls"] = openai_calls(calls)
            history.append(reply)
            return
        last = history[-1] if len(history) == record.history_len + 1 else None
        if isinstance(last, dict) and last.get("content") == record.text:
            history.pop()


def split_last_turn(messages: object, options: PromptOptions) -> tuple[str, list[dict[str, Any]], PromptOptions]:
    """A conversation given whole, as the prompt to answer (its last message), the history before it, and the options
    that message implies (its images, or the call a tool turn answers); `ValueError` names what is wrong."""
    history = check_history(list(messages) if isinstance(messages, (list, tuple)) else messages, "messages")
    if not history:
        raise LlamaValueError("messages must not be empty: the last message is the one to answer", param="messages")
    last = history[-1]
    where = f"messages[{len(history) - 1}]"
    role = last["role"]
    if role not in ("user", "tool"):
        raise LlamaValueError(
            f"{where} is a {role!r} message; the last message must be a user or tool turn to answer",
            param=f"{where}.role",
        )
    if not isinstance(last["content"], str):
        raise LlamaValueError(f"{where}.content must be text", param=f"{where}.content")
    images = tuple(last.get("images") or ())
    if images and options.images:
        raise LlamaValueError(f"{where} has images and so do the options; give them in one place", param="images")
    if images:
        options = dataclasses.replace(options, images=images)
    if role == "tool":
        call = last.get("tool_call_id")
        if not isinstance(call, str) or not call:
            raise LlamaValueError(
                f"{where} is a tool turn, and needs a tool_call_id (a non-empty str)", param=f"{where}.tool_call_id"
            )
        options = dataclasses.replace(options, tool_call_id=call)
    return last["content"], history[:-1], options


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
        record.scope_id,
        turns,
        sampler,
        record.max_tokens,
        images,
        record.options.raw,
        record.options.logprobs,
        tools=None if tools is None else tools.specs_json,
        tool_markers=() if tools is None or tools.mode == "none" else FORMATS[tool_format].markers(tools.names),
        tool_grammar=grammar if tools is not None and tools.mode == "auto" else None,
        n=record.options.n,
        trim=record.trim,
    )


def _turns(history: list[dict[str, Any]], tool_format: ToolFormat) -> tuple[tuple[str, str], ...]:
    """Checked messages as (role, text) pairs for the template."""
    return tuple((plain(m["role"]), _content(m, tool_format)) for m in history)


def _content(message: dict[str, Any], tool_format: ToolFormat) -> str:
    """A message's text for the template; an assistant's tool calls are written in, as the model writes them."""
    calls = message.get("tool_calls")
    content = plain(message["content"])
    return render_calls(content, calls, tool_format) if calls else content
