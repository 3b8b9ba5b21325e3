"""OpenAI's response objects: chat completions, text completions, their stream chunks, and usage.

Streams follow what the ``openai`` SDK expects: every chunk has the same
``id`` and ``created``; a chat stream's first delta carries the ``role``;
the last choice chunk carries ``finish_reason`` with an empty delta; with
``stream_options.include_usage`` one more chunk with ``choices: []`` and the
``usage`` follows; the stream ends with ``data: [DONE]``. A failure after
the stream started is sent as ``data: {"error": {...}}`` before ``[DONE]``
(the SDK raises it as an `APIError`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from llama_isolate import CompletionChoice, CompletionEvent, TokenLogprob, ToolCallDelta

from .errors import error_body, event_error
from .generation import Generation, Item

DONE = b"data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def usage(event: CompletionEvent) -> dict[str, Any]:
    """OpenAI's usage: prompt tokens count the cached ones too, which `prompt_tokens_details` names."""
    prompt = event.prompt_tokens + event.cached_tokens
    completion = sum(c.completion_tokens for c in event.choices) if event.choices else event.completion_tokens
    counts: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": event.cached_tokens},
    }
    timings = event.timings
    if timings.draft_tokens:  # speculative decoding: OpenAI's names for guessed tokens kept and thrown away
        counts["completion_tokens_details"] = {
            "accepted_prediction_tokens": timings.draft_accepted,
            "rejected_prediction_tokens": timings.draft_tokens - timings.draft_accepted,
        }
    if event.dropped_turns:  # ours: the request asked for trimming (trim_history), and it happened
        counts["dropped_messages"] = event.dropped_turns
    return counts


def completed(event: CompletionEvent) -> bool:
    """True if the prompt ran to its end (not failed, not cancelled by a shutdown)."""
    return event.success and event.finish_reason in ("stop", "length")


def finish_reason(event: CompletionEvent) -> str:
    if event.tool_calls:
        return "tool_calls"
    return "length" if event.finish_reason == "length" else "stop"


def tool_calls(event: CompletionEvent, *, indexed: bool = False) -> list[dict[str, Any]]:
    """The event's calls as OpenAI's ``tool_calls`` (with an ``index`` each in a stream's delta)."""
    calls = []
    for i, call in enumerate(event.tool_calls):
        function = {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}
        calls.append({**({"index": i} if indexed else {}), "id": call.id, "type": "function", "function": function})
    return calls


@dataclass
class OpenAIAnswer:
    """One OpenAI answer (chat or text completion): its id and model, and the objects and chunks it is written as."""

    kind: Literal["chat", "text"]
    model: str
    logprobs: bool = False  # each choice carries its tokens' log probabilities
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    _offset: int = 0  # where the next chunk's text starts, for a text completion's text_offset

    def __post_init__(self) -> None:
        prefix = "chatcmpl" if self.kind == "chat" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"

    def _object(self, chunk: bool) -> str:
        if self.kind == "text":
            return "text_completion"
        return "chat.completion.chunk" if chunk else "chat.completion"

    def _head(self, chunk: bool) -> dict[str, Any]:
        return {"id": self.id, "object": self._object(chunk), "created": self.created, "model": self.model}

    def _choice(
        self, text: str | None, reason: str | None, *, first: bool = False, entries: Sequence[TokenLogprob] = ()
    ) -> dict[str, Any]:
        logprobs = self._logprobs(entries) if self.logprobs and entries else None
        if self.kind == "text":
            return {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": reason}
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason}

    def _logprobs(self, entries: Sequence[TokenLogprob], *, own: bool = False) -> dict[str, Any]:
        """OpenAI's logprobs object for these tokens: a chat's ``content`` list, or a completion's four lists.

        A completion's offsets go on from the last chunk's, or start at 0 for a choice's `own` whole text.
        """
        if self.kind == "chat":
            return {"content": [_chat_entry(e, e.top) for e in entries], "refusal": None}
        offsets = []
        offset = 0 if own else self._offset
        for entry in entries:
            offsets.append(offset)
            offset += len(entry.text)
        if not own:
            self._offset = offset
        return {
            "tokens": [e.text for e in entries],
            "token_logprobs": [_finite(e.logprob) for e in entries],
            "top_logprobs": [{t.text: _finite(t.logprob) for t in e.top} for e in entries],
            "text_offset": offsets,
        }

    def whole(self, text: str, event: CompletionEvent) -> dict[str, Any]:
        """The non-streaming answer."""
        choice = self._choice(text, finish_reason(event), entries=event.logprobs or ())
        if self.kind == "chat":
            delta = choice.pop("delta")
            message: dict[str, Any] = {"role": "assistant", "content": delta["content"], "refusal": None}
            if event.tool_calls:
                message["content"] = delta["content"] or None
                message["tool_calls"] = tool_calls(event)
            choice = {"index": 0, "message": message, **choice}
        others = [self._whole_choice(c) for c in event.choices[1:]]
        return {**self._head(False), "choices": [choice, *others], "usage": usage(event)}

    def _streamed_choice(self, choice: CompletionChoice) -> dict[str, Any]:
        """Choice 1 or later in a stream: its text and its end in one chunk."""
        whole = self._whole_choice(choice)
        if self.kind == "text":
            return whole
        message = whole.pop("message")
        return {**whole, "delta": {"role": "assistant", "content": message["content"]}}

    def _whole_choice(self, choice: CompletionChoice) -> dict[str, Any]:
        """Choice 1 or later of a prompt with n above 1, whole."""
        reason = "length" if choice.finish_reason == "length" else "stop"
        logprobs = self._logprobs(choice.logprobs, own=True) if self.logprobs and choice.logprobs is not None else None
        if self.kind == "text":
            return {"index": choice.index, "text": choice.text, "logprobs": logprobs, "finish_reason": reason}
        message = {"role": "assistant", "content": choice.text, "refusal": None}
        return {"index": choice.index, "message": message, "logprobs": logprobs, "finish_reason": reason}

    async def stream(self, generation: Generation, first: Item, include_usage: bool) -> AsyncIterator[bytes]:
        """The chunks of a streamed answer, starting from its first item (already received)."""
        usage_field: dict[str, Any] = {"usage": None} if include_usage else {}
        if self.kind == "chat":
            yield sse({**self._head(True), "choices": [self._choice("", None, first=True)], **usage_field})
        item, streamed_calls = first, False
        while not isinstance(item, CompletionEvent):
            if isinstance(item, ToolCallDelta):
                streamed_calls = True
                choice = {"index": 0, "delta": {"tool_calls": [_call_delta(item)]}, "logprobs": None}
                yield sse({**self._head(True), "choices": [{**choice, "finish_reason": None}], **usage_field})
            else:
                choice = self._choice(item, None, entries=generation.take_logprobs())
                yield sse({**self._head(True), "choices": [choice], **usage_field})
            item = await generation.next()
        if completed(item):
            if item.tool_calls and not streamed_calls:  # (a text completion's)
                calls = {"index": 0, "delta": {"tool_calls": tool_calls(item, indexed=True)}, "logprobs": None}
                yield sse({**self._head(True), "choices": [{**calls, "finish_reason": None}], **usage_field})
            for other in item.choices[1:]:  # the other choices, whole, once the prompt has ended
                yield sse({**self._head(True), "choices": [self._streamed_choice(other)], **usage_field})
            end = self._choice(None if self.kind == "chat" else "", finish_reason(item))
            yield sse({**self._head(True), "choices": [end], **usage_field})
            if include_usage:
                yield sse({**self._head(True), "choices": [], "usage": usage(item)})
        else:
            error = event_error(item)
            yield sse(error_body(error.status, error.message, code=error.code))
        yield DONE


def _call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    """A call's piece in a chunk: its first carries the id, type and name, the others the next arguments' text."""
    if delta.name:
        function = {"name": delta.name, "arguments": delta.arguments}
        return {"index": delta.index, "id": delta.id, "type": "function", "function": function}
    return {"index": delta.index, "function": {"arguments": delta.arguments}}


def _chat_entry(entry: TokenLogprob, top: Sequence[TokenLogprob] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"token": entry.text, "logprob": _finite(entry.logprob), "bytes": list(entry.piece)}
    if top is not None:
        out["top_logprobs"] = [_chat_entry(t, None) for t in top]
    return out


def _finite(logprob: float) -> float:
    """JSON has no -Infinity: a banned token's log probability is written as -9999."""
    return max(logprob, -9999.0)
