"""Chat histories: the parent's own conversation and each scope's, and the turns of prompts.

A prompt's user turn joins its conversation when the prompt starts, and its
reply when it ends (a failed prompt leaves the conversation as it was). The
history a prompt starts from is checked first: callers may edit `messages`
between prompts, and a malformed entry must fail that prompt with a message
naming it, never reach the worker.
"""

from __future__ import annotations

from typing import Any

from . import _protocol as protocol
from ._checks import check_history
from ._queue import Conversation, PromptRecord


class Conversations:
    """The histories prompts are sent with, and the bookkeeping of their turns."""

    def __init__(self) -> None:
        self.default: list[dict[str, Any]] = []
        """The parent's own conversation (`LlamaParent.messages`)."""

    def history(self, scope: Conversation | None) -> list[dict[str, Any]]:
        """The conversation of `scope` (the parent's own for None)."""
        return self.default if scope is None else scope.messages

    def check(self, scope: Conversation | None) -> None:
        """Raise `ValueError` naming the field if the conversation holds a malformed message."""
        check_history(self.history(scope), "messages" if scope is None else f"scope {scope.id} messages")

    def open_turn(self, record: PromptRecord) -> protocol.Submit:
        """Append the prompt's user turn and return the command that starts it; `ValueError` if malformed."""
        self.check(record.scope)
        history = self.history(record.scope)
        record.history_len = len(history)
        turn: dict[str, Any] = {"role": "user", "content": record.text}
        if record.images:
            turn["images"] = record.images
        history.append(turn)
        return _submit(record, history)

    def settle(self, record: PromptRecord, text: str, *, failed: bool) -> None:
        """A reply joins the conversation; a failed prompt takes its user turn back out."""
        if record.history_len is None:
            return  # never started: its user turn was never added
        history = self.history(record.scope)
        if not failed:
            history.append({"role": "assistant", "content": text})
            return
        last = history[-1] if len(history) == record.history_len + 1 else None
        if isinstance(last, dict) and last.get("content") == record.text:
            history.pop()


def _submit(record: PromptRecord, history: list[dict[str, Any]]) -> protocol.Submit:
    """The command that starts `record`, with its whole conversation (and its images, if any)."""
    turns = tuple((str(m["role"]), str(m["content"])) for m in history)
    images: tuple[tuple[tuple[str, bytes], ...], ...] = ()
    if any(m.get("images") for m in history):
        images = tuple(tuple((i.name, i.data) for i in m.get("images") or ()) for m in history)
    return protocol.Submit(
        record.id, record.scope_key, turns, record.sampler, record.max_tokens, images, record.raw, record.logprobs
    )
