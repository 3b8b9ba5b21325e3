"""The prompts a parent knows of, and which may start next.

`PromptQueue` is pure bookkeeping (no I/O, no event loop): prompts wait in
send order; one starts when a slot is free and its conversation has nothing
running (it needs that reply in its history), so prompts of other
conversations may pass a waiting one.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import _protocol as protocol
from .._errors import LlamaQueueFull
from .._events import CompletionEvent, TokenLogprob, ToolCall, ToolCallDelta
from .._grammar.tools import CallReader, ToolPlan
from .._options import PromptOptions
from .._params import SamplerParams
from .._streams import EventStream, TokenStream


class Streams(Protocol):
    """Where prompts' output goes: a parent's streams (every prompt's) and a scope's (its own prompts')."""

    @property
    def stream(self) -> TokenStream: ...

    @property
    def token_logprobs(self) -> EventStream[TokenLogprob]: ...

    @property
    def tool_call_deltas(self) -> EventStream[ToolCallDelta]: ...

    @property
    def completions(self) -> EventStream[CompletionEvent]: ...


class Conversation(Streams, Protocol):
    """What a prompt needs of the scope it was sent through (`LlamaScope` is one): its streams, and these."""

    id: str
    messages: list[dict[str, Any]]
    trim_history: bool


class PromptListener(Protocol):
    """Who hears one prompt's output besides the streams (`PromptHandle` is one)."""

    def on_piece(self, item: str | ToolCallDelta) -> None: ...

    def on_logprob(self, entry: TokenLogprob) -> None: ...

    def on_event(self, event: CompletionEvent) -> None: ...


@dataclass(eq=False)
class PromptRecord:
    """The parent's record of one prompt, from send to completion event."""

    id: str
    scope: Conversation | None  # where its pieces and event are also streamed (and, by default, its history)
    text: str
    sampler: SamplerParams  # the options' sampler, with the grammar a schema needs
    max_tokens: int
    options: PromptOptions = field(default_factory=PromptOptions)  # as the caller gave them
    trim: bool = True  # a conversation over the context loses its oldest turns (else the prompt fails)
    tools: ToolPlan | None = None  # the functions the model may call, and how
    history: list[dict[str, Any]] | None = None  # the conversation it joins (None: its scope's, or the parent's)
    key: str | None = None  # its conversation's key in the worker (None: its scope's id, "" for the parent's)
    listener: PromptListener | None = None
    calls: tuple[ToolCall, ...] = ()  # the calls the reply made
    tool_format: str = "hermes"  # the model's, once dispatched
    call_reader: CallReader | None = None  # reads the reply's calls as they are written (tools, not "none")
    choice_pieces: dict[int, list[str]] = field(default_factory=dict)  # the text of choices 1..n-1
    choice_logprobs: dict[int, list[TokenLogprob]] = field(default_factory=dict)  # their tokens (with logprobs=k)
    choice_ends: dict[int, protocol.Finished] = field(default_factory=dict)  # how each choice ended
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    first_token: float | None = None
    pieces: list[str] = field(default_factory=list)
    token_logprobs: list[TokenLogprob] = field(default_factory=list)
    history_len: int | None = None  # len(history) before our user turn, once dispatched

    @property
    def reply(self) -> str:
        """The text generated so far."""
        return "".join(self.pieces)

    @property
    def scope_id(self) -> str:
        """Its conversation's id in the worker: its own (a `generate` call's), else its scope's."""
        if self.key is not None:
            return self.key
        return "" if self.scope is None else self.scope.id


class PromptQueue:
    """Waiting prompts in send order, and the running ones (at most `slots`).

    Example::

        queue = PromptQueue(slots=1, max_queue=None)
        queue.push(record)
        started = queue.pop_next()  # record, now running
        queue.finish(started.id)
    """

    def __init__(self, *, slots: int, max_queue: int | None) -> None:
        self._slots = slots
        self._max_queue = max_queue
        self._waiting: collections.deque[PromptRecord] = collections.deque()
        self.running: dict[str, PromptRecord] = {}

    def __len__(self) -> int:
        """Prompts waiting to start."""
        return len(self._waiting)

    def __iter__(self) -> Iterator[PromptRecord]:
        """Every prompt not finished: the waiting ones in order, then the running ones."""
        yield from list(self._waiting)
        yield from list(self.running.values())

    def push(self, record: PromptRecord) -> None:
        """Queue `record` last; raises `LlamaQueueFull` (and queues nothing) beyond `max_queue`."""
        if self._max_queue is not None and len(self._waiting) >= self._max_queue:
            raise LlamaQueueFull(f"{len(self._waiting)} prompts are waiting (max_queue={self._max_queue})")
        self._waiting.append(record)

    def pop_next(self) -> PromptRecord | None:
        """The first waiting prompt that may start now, moved to the running ones; None if none may."""
        if len(self.running) >= self._slots:
            return None
        busy = {record.scope_id for record in self.running.values()}
        for record in self._waiting:
            if record.scope_id not in busy:
                self._waiting.remove(record)
                self.running[record.id] = record
                return record
        return None

    def finish(self, prompt_id: str) -> PromptRecord | None:
        """Forget a running prompt; returns it, or None if it was not running."""
        return self.running.pop(prompt_id, None)

    def remove_waiting(self, which: Callable[[PromptRecord], bool]) -> list[PromptRecord]:
        """Take the waiting prompts `which` selects out of the queue, in order."""
        taken = [record for record in self._waiting if which(record)]
        for record in taken:
            self._waiting.remove(record)
        return taken

    def running_of(self, scope_id: str) -> list[PromptRecord]:
        """The running prompts of one conversation."""
        return [record for record in self.running.values() if record.scope_id == scope_id]

    def has_scope(self, scope_id: str) -> bool:
        """True while the conversation has a prompt waiting or running."""
        return any(record.scope_id == scope_id for record in self)

    def drain(self) -> list[PromptRecord]:
        """Every unfinished prompt (waiting first, in order), all forgotten."""
        records = list(self)
        self._waiting.clear()
        self.running.clear()
        return records
