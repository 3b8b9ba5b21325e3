"""PromptFlow: a prompt's way from `send_prompt` to its completion event.

It ties the pure pieces together: the `PromptQueue` decides what starts,
`Conversations` open and settle the turns, the `CompletionLedger` emits one
event per prompt, and commands go to the worker through `send`. It knows
nothing of the parent's status or of the worker's life: the parent tells it
when it may dispatch, and what to fail when the worker dies.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from typing import Any

from .. import _protocol as protocol
from .._checks import check_int, check_text
from .._errors import LlamaTypeError, LlamaValueError
from .._events import ErrorCode, FinishReason
from .._grammar.schema import json_schema_grammar
from .._grammar.tools import CallReader, ToolFormat, ToolPlan, parse_calls
from .._grammar.tools import plan as plan_tools
from .._images import MEDIA_MARKER
from .._options import PromptOptions
from .._params import LlamaLoad, SamplerParams
from .completions import CompletionLedger, Ending, token_logprob
from .conversations import Conversations
from .queue import Conversation, PromptListener, PromptQueue, PromptRecord, Streams


class PromptFlow:
    """The prompts of one parent: queued, running, and ended exactly once."""

    def __init__(
        self,
        load: LlamaLoad,
        *,
        max_queue: int | None,
        keep_completed: int,
        streams: Streams,
        send: Callable[[protocol.Command], None],
        tool_format: Callable[[], ToolFormat],
    ) -> None:
        self._load = load
        self._send = send
        self._tool_format = tool_format
        self.queue = PromptQueue(slots=load.context_params.n_parallel, max_queue=max_queue)
        self.conversations = Conversations()
        self.ledger = CompletionLedger(keep=keep_completed, streams=streams)

    def enqueue(
        self,
        prompt: str,
        scope: Conversation | None,
        options: PromptOptions,
        *,
        history: list[dict[str, Any]] | None = None,
        listener: PromptListener | None = None,
        prompt_id: str | None = None,
    ) -> PromptRecord:
        """Check a prompt and queue it; `ValueError`/`TypeError` name a bad argument, nothing is queued then.

        `history` gives the prompt a conversation of its own (a `generate`
        call's, keyed ``prompt-<id>`` in the worker) instead of its scope's;
        `listener` hears its output.
        """
        if not isinstance(prompt, str):
            raise LlamaTypeError(f"prompt must be a str, got {type(prompt).__name__}", param="prompt")
        check_text(prompt, "prompt")
        check_int(options.n, "n", 1, self._load.context_params.n_parallel)  # each choice decodes in a slot of its own
        if scope is None and history is None:
            history = []  # a conversation of its own, as `generate` gives
        self.conversations.check(scope, history)
        prompt_id = prompt_id or uuid.uuid4().hex
        trim = options.trim_history
        if trim is None:
            trim = True if scope is None or history is not None else scope.trim_history
            if not isinstance(trim, bool):
                raise LlamaTypeError(f"trim_history must be a bool, got {type(trim).__name__}", param="trim_history")
        sampler = options.sampler_params or self._load.sampler_params
        if options.stop is not None:
            sampler = dataclasses.replace(sampler, stop=options.stop)
        sampler, tool_plan = _grammar_of(sampler, options)
        try:
            protocol.sendable(sampler)
        except TypeError as exc:
            raise LlamaTypeError(f"sampler_params: {exc}", param="sampler_params") from None
        record = PromptRecord(
            id=prompt_id,
            scope=scope,
            text=prompt,
            sampler=sampler,
            max_tokens=options.max_tokens or self._load.context_params.n_predict,
            options=options,
            trim=trim,
            tools=tool_plan,
            history=history,
            key=None if history is None else f"prompt-{prompt_id}",
            listener=listener,
        )
        self.queue.push(record)
        self.ledger.open(record)
        return record

    def dispatch(self) -> None:
        """Send queued prompts down while slots are free, in FIFO order (see `PromptQueue`)."""
        while (record := self.queue.pop_next()) is not None:
            record.tool_format = self._tool_format()
            if record.tools is not None and record.tools.mode != "none":
                record.call_reader = CallReader(record.tool_format)
            try:
                self._send(self.conversations.open_turn(record, record.tool_format))
            except (ValueError, TypeError) as exc:  # its conversation was edited into something malformed or unsendable
                self.queue.finish(record.id)
                self.end(record, Ending("error", str(exc), "invalid_prompt"))

    # ------------------------------------------------------------------ replies

    def started(self, prompt_id: str) -> None:
        record = self.queue.running.get(prompt_id)
        if record is not None:
            record.started = time.monotonic()

    def tokens(self, reply: protocol.Tokens) -> None:
        record = self.queue.running.get(reply.prompt_id)
        if record is None:
            return
        if reply.choice:  # choices after the first are kept for the event, not streamed
            record.choice_pieces.setdefault(reply.choice, []).append(reply.text)
            if reply.logprob is not None:
                record.choice_logprobs.setdefault(reply.choice, []).append(token_logprob(reply.logprob))
        else:
            self.ledger.token(record, reply.text, reply.logprob)
        if reply.call and record.call_reader is not None:
            for delta in record.call_reader.feed(reply.call):
                self.ledger.tool_call_delta(record, delta)

    def finished(self, reply: protocol.Finished) -> None:
        waiting = self.queue.running.get(reply.prompt_id)
        if waiting is not None and waiting.options.n > 1:  # the prompt ends with its last choice
            waiting.choice_ends[reply.choice] = reply
            first = waiting.choice_ends.get(0)
            if first is None or len(waiting.choice_ends) <= first.forks:
                return
            reply = first
        record = self.queue.finish(reply.prompt_id)
        if record is not None:
            self.end(record, Ending.of(reply))

    def fault(self, prompt_id: str, error: str) -> None:
        """Handling one of this prompt's replies raised: fail it alone, and stop it in the worker."""
        record = self.queue.finish(prompt_id)
        if record is not None:
            self._send(protocol.Cancel((prompt_id,), "cancelled"))
            self.end(record, Ending("error", error, "internal_error"))

    def end(self, record: PromptRecord, ending: Ending) -> None:
        """The one way a prompt ends: its conversation settles, then its event goes out (once)."""
        if not self.ledger.is_open(record.id):
            return
        stats = ending.stats
        call_text = stats.tool_text if stats is not None and record.tools is not None else None
        if call_text:
            ids = () if record.call_reader is None else record.call_reader.ids
            record.calls = parse_calls(call_text, record.tool_format, ids)
            if not record.calls:  # begun but not in a form the grammar took: it stays text
                record.pieces.append(call_text)
        self.conversations.settle(record, record.reply, failed=ending.reason == "error", calls=record.calls)
        if record.history is not None and record.key is not None:  # a conversation of its own: the worker forgets it
            self._send(protocol.DropScope(record.key))
        self.ledger.complete(record, ending)

    # ------------------------------------------------------------------ ending many

    async def cancel_running(self, prompt_ids: list[str], reason: protocol.CancelReason) -> None:
        """Ask the worker to end these prompts; returns once their events were emitted."""
        if prompt_ids:
            self._send(protocol.Cancel(tuple(prompt_ids), reason))
            await self.ledger.wait_all(prompt_ids)

    async def cancel_prompt(self, prompt_id: str) -> None:
        """Cancel one prompt, waiting or running; returns once its event was emitted."""
        for record in self.queue.remove_waiting(lambda r: r.id == prompt_id):
            self.end(record, Ending("cancelled"))
        if prompt_id in self.queue.running:
            await self.cancel_running([prompt_id], "cancelled")

    async def stop_scope(self, scope: Conversation) -> None:
        """Cancel a conversation's waiting and running prompts."""
        for record in self.queue.remove_waiting(lambda r: r.scope is scope):
            self.end(record, Ending("cancelled"))
        await self.cancel_running([r.id for r in self.queue.running_of(scope.id)], "cancelled")

    def end_running(self, reason: FinishReason, error: str | None = None, error_code: ErrorCode | None = None) -> None:
        """End every running prompt here (the worker is gone); waiting ones stay queued."""
        ending = Ending(reason, error, error_code)
        for prompt_id in list(self.queue.running):
            record = self.queue.finish(prompt_id)
            if record is not None:
                self.end(record, ending)

    def end_all(self, reason: FinishReason, error: str | None = None, error_code: ErrorCode | None = None) -> None:
        """End every prompt not finished, waiting or running."""
        ending = Ending(reason, error, error_code)
        for record in self.queue.drain():
            self.end(record, ending)


def with_markers(prompt: str, count: int) -> str:
    """An image prompt's text with one `MEDIA_MARKER` per image (before the text when it has none)."""
    markers = prompt.count(MEDIA_MARKER)
    if markers == 0:
        return "".join(f"{MEDIA_MARKER}\n" for _ in range(count)) + prompt
    if markers != count:
        raise LlamaValueError(
            f"the prompt has {markers} image markers ({MEDIA_MARKER}) for {count} images", param="prompt"
        )
    return prompt


def _grammar_of(sampler: SamplerParams, options: PromptOptions) -> tuple[SamplerParams, ToolPlan | None]:
    """The sampler with the grammar a JSON schema needs, and the tool plan (a forced call's grammar is set at dispatch,
    in the model's call format)."""
    if options.json_schema is not None:
        if sampler.grammar is not None:
            raise LlamaValueError(
                "json_schema and SamplerParams.grammar exclude each other (the schema is a grammar)",
                param="json_schema",
            )
        sampler = dataclasses.replace(sampler, grammar=json_schema_grammar(options.json_schema))
    if options.tools is None:
        return sampler, None
    if options.json_schema is not None or sampler.grammar is not None:
        raise LlamaValueError(
            "tools exclude json_schema and SamplerParams.grammar (a call has its own grammar)", param="tools"
        )
    if options.raw:
        raise LlamaValueError("tools need the chat template to show them; a raw prompt has none", param="tools")
    return sampler, plan_tools(options.tools, options.tool_choice)
