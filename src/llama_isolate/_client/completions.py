"""The completion ledger: one future and one event per prompt, and the fan-out of tokens.

Every prompt id the parent hands out is opened here and completed exactly
once; completing it again is a no-op, so a late reply from the worker can
never produce a second event. The last `keep` events stay answerable by
`wait_for_completion` after the fact.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .. import _protocol as protocol
from .._events import (
    CompletionChoice,
    CompletionEvent,
    CompletionTimings,
    ErrorCode,
    FinishReason,
    TokenLogprob,
    ToolCallDelta,
)
from .._streams import EventStream
from .queue import PromptRecord, Streams

T = TypeVar("T")


@dataclass(frozen=True)
class Ending:
    """How a prompt ended: its finish reason, why when it failed, and the worker's last reply when there was one.

    Example::

        Ending("error", "the worker process died", error_code="worker_died")
    """

    reason: FinishReason
    error: str | None = None
    error_code: ErrorCode | None = None
    stats: protocol.Finished | None = None

    @classmethod
    def of(cls, reply: protocol.Finished) -> Ending:
        """The ending the worker reported."""
        return cls(reply.finish_reason, reply.error, stats=reply)


class CompletionLedger:
    """Futures of unfinished prompts, the most recent events, and the streams they go to."""

    def __init__(self, *, keep: int, streams: Streams) -> None:
        self._keep = keep
        self._streams = streams  # the parent's: every prompt's output
        self._futures: dict[str, asyncio.Future[CompletionEvent]] = {}
        self._events: collections.OrderedDict[str, CompletionEvent] = collections.OrderedDict()

    def open(self, record: PromptRecord) -> None:
        """Start tracking a prompt (on the running loop)."""
        self._futures[record.id] = asyncio.get_running_loop().create_future()

    def is_open(self, prompt_id: str) -> bool:
        """True until the prompt's event was emitted."""
        return prompt_id in self._futures

    @property
    def open_count(self) -> int:
        """Prompts without an event yet."""
        return len(self._futures)

    def token(self, record: PromptRecord, text: str, logprob: protocol.Logprob | None = None) -> None:
        """One piece of a prompt's text (and a token's log probability): kept for its event, sent to the streams."""
        if record.first_token is None:
            record.first_token = time.monotonic()
        if logprob is not None:
            entry = token_logprob(logprob)
            record.token_logprobs.append(entry)
            self._fan_out(record, _logprobs, entry)
            if record.listener is not None:
                record.listener.on_logprob(entry)
        if text:
            record.pieces.append(text)
            self._fan_out(record, _text, text)
            if record.listener is not None:
                record.listener.on_piece(text)

    def tool_call_delta(self, record: PromptRecord, delta: ToolCallDelta) -> None:
        """A piece of one of a prompt's tool calls, to the streams."""
        if record.first_token is None:
            record.first_token = time.monotonic()
        self._fan_out(record, _calls, delta)
        if record.listener is not None:
            record.listener.on_piece(delta)

    def complete(self, record: PromptRecord, ending: Ending) -> CompletionEvent | None:
        """Emit the prompt's event, once; returns it, or None if it was already completed."""
        future = self._futures.pop(record.id, None)
        if future is None:
            return None
        event = _event(record, ending)
        self._events[record.id] = event
        while len(self._events) > self._keep:
            self._events.popitem(last=False)
        if not future.done():
            future.set_result(event)
        if record.listener is not None:
            record.listener.on_event(event)
        self._fan_out(record, _events, event)
        return event

    def _fan_out(self, record: PromptRecord, pick: Callable[[Streams], EventStream[T]], item: T) -> None:
        """`item` to the parent's stream `pick` chooses, and to the same stream of the prompt's scope."""
        pick(self._streams)._emit(item)
        if record.scope is not None:
            pick(record.scope)._emit(item)

    async def wait(self, prompt_id: str) -> CompletionEvent:
        """The prompt's event, now or once it comes; `KeyError` for an id unknown or forgotten."""
        event = self._events.get(prompt_id)
        if event is not None:
            return event
        future = self._futures.get(prompt_id)
        if future is None:
            raise KeyError(
                f"unknown prompt id {prompt_id!r} (never sent, or older than the last keep_completed events)"
            )
        return await asyncio.shield(future)

    async def wait_all(self, prompt_ids: list[str]) -> None:
        """Return once every one of these prompts has its event (shielded from cancellation)."""
        futures = [self._futures[pid] for pid in prompt_ids if pid in self._futures]
        if futures:
            await asyncio.shield(asyncio.gather(*futures))


def _text(streams: Streams) -> EventStream[str]:
    return streams.stream


def _logprobs(streams: Streams) -> EventStream[TokenLogprob]:
    return streams.token_logprobs


def _calls(streams: Streams) -> EventStream[ToolCallDelta]:
    return streams.tool_call_deltas


def _events(streams: Streams) -> EventStream[CompletionEvent]:
    return streams.completions


def _event(record: PromptRecord, ending: Ending) -> CompletionEvent:
    reason, error, error_code = ending.reason, ending.error, ending.error_code
    now = time.monotonic()
    stats = ending.stats or protocol.Finished(prompt_id=record.id, finish_reason=reason)
    generation_s = stats.generation_s
    ends = list(record.choice_ends.values()) or [stats]  # every choice's, when there were several
    return CompletionEvent(
        prompt_id=record.id,
        success=reason != "error",
        error=error if reason == "error" else None,
        text=record.reply,
        finish_reason=reason,
        scope_id=None if record.scope is None else record.scope.id,
        prompt_tokens=stats.prompt_tokens,
        cached_tokens=stats.cached_tokens,
        dropped_turns=stats.dropped_turns,
        completion_tokens=stats.completion_tokens,
        timings=CompletionTimings(
            queued_s=(record.started or now) - record.submitted,
            first_token_s=None if record.first_token is None else record.first_token - record.submitted,
            total_s=now - record.submitted,
            prompt_eval_s=stats.prompt_eval_s,
            tokens_per_second=stats.completion_tokens / generation_s if generation_s > 0 else 0.0,
            draft_tokens=sum(end.draft_tokens for end in ends),
            draft_accepted=sum(end.draft_accepted for end in ends),
        ),
        error_code=(stats.error_code or error_code or "internal_error") if reason == "error" else None,
        logprobs=None if record.options.logprobs is None else _within(record.token_logprobs, record.reply),
        tool_calls=record.calls,
        choices=_choices(record, reason, stats),
    )


def token_logprob(logprob: protocol.Logprob) -> TokenLogprob:
    """A token's log probability as the worker sends it, as the public record."""
    token, piece, chosen, top = logprob
    alternatives = tuple(TokenLogprob(t, p.decode(errors="replace"), p, lp) for t, p, lp in top)
    return TokenLogprob(token, piece.decode(errors="replace"), piece, chosen, alternatives)


def _choices(record: PromptRecord, reason: FinishReason, stats: protocol.Finished) -> tuple[CompletionChoice, ...]:
    """Every reply of a prompt sent with n above 1, choice 0 first."""
    if record.options.n <= 1:
        return ()

    def logprobs(entries: list[TokenLogprob], text: str) -> tuple[TokenLogprob, ...] | None:
        return None if record.options.logprobs is None else _within(entries, text)

    out = [
        CompletionChoice(
            0, record.reply, reason, stats.completion_tokens, logprobs(record.token_logprobs, record.reply)
        )
    ]
    for index, end in sorted(record.choice_ends.items()):
        if index:
            text = "".join(record.choice_pieces.get(index, ()))
            entries = logprobs(record.choice_logprobs.get(index, []), text)
            out.append(CompletionChoice(index, text, end.finish_reason, end.completion_tokens, entries))
    return tuple(out)


def _within(entries: list[TokenLogprob], text: str) -> tuple[TokenLogprob, ...]:
    """The entries whose bytes start within `text` (a stop string's tokens, cut from the text, are left out)."""
    end, offset, kept = len(text.encode()), 0, []
    for entry in entries:
        if offset >= end:
            break
        kept.append(entry)
        offset += len(entry.piece)
    return tuple(kept)
