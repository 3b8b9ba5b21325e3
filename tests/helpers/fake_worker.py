"""Stand-ins for the worker, so that the parent's engine client is tested in milliseconds, without llama.cpp.

`FakeWorker` takes the commands a `PromptFlow` sends and answers each
`Submit` with `Started`, `Tokens` and `Finished` replies on the event loop, as
the worker does (or holds them until the test answers); `FakeParent` wires a
`PromptFlow` to it as `LlamaParent` does. `FakeProcesses` starts `FakeProcess`es
for a `WorkerLink`: a process that loads at once and answers pings while told.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llama_isolate import CompletionEvent, ContextParams, LlamaLoad, ModelInfo, TokenLogprob, ToolCallDelta
from llama_isolate import _protocol as protocol
from llama_isolate._client.prompts import PromptFlow, PromptOptions
from llama_isolate._streams import EventStream, TokenStream

Script = Callable[[protocol.Submit], Sequence[protocol.Reply]]


def reply_to(text: str) -> str:
    """What `echo` answers to a prompt of `text`."""
    return f"re: {text}"


def echo(submit: protocol.Submit) -> list[protocol.Reply]:
    """Each choice answers `reply_to(prompt)` in one token per word; choice 0 ends last, as the worker's does."""
    words = reply_to(submit.messages[-1][1]).split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    replies: list[protocol.Reply] = [protocol.Started(submit.prompt_id)]
    for choice in range(submit.n):
        replies += [protocol.Tokens(submit.prompt_id, piece, choice=choice) for piece in pieces]
    replies += [
        protocol.Finished(prompt_id=submit.prompt_id, finish_reason="stop", completion_tokens=len(pieces), choice=c)
        for c in range(1, submit.n)
    ]
    replies.append(
        protocol.Finished(
            prompt_id=submit.prompt_id, finish_reason="stop", completion_tokens=len(pieces), forks=submit.n - 1
        )
    )
    return replies


class FakeWorker:
    """Takes a `PromptFlow`'s commands, and answers them on the event loop as the worker would.

    Each `Submit` is answered with `script(submit)` once the sending code
    yields to the loop, unless `hold` is set: then it waits for `answer()`. A
    `Cancel` ends each of its prompts still unanswered with a `Finished` of the
    cancel's reason. `deliver()` hands any reply to the flow, late ones too;
    `idle()` returns once every reply the fake has scheduled was delivered.
    """

    def __init__(self, script: Script = echo, *, hold: bool = False) -> None:
        self.script = script
        self.hold = hold
        self.commands: list[protocol.Command] = []
        self.flow: PromptFlow | None = None
        self._unanswered: dict[str, protocol.Submit] = {}
        self._scheduled = 0
        self._idle = asyncio.Event()

    @property
    def submitted(self) -> list[protocol.Submit]:
        """The prompts sent down, in the order they were sent."""
        return [c for c in self.commands if isinstance(c, protocol.Submit)]

    @property
    def submitted_ids(self) -> list[str]:
        return [s.prompt_id for s in self.submitted]

    @property
    def cancels(self) -> list[protocol.Cancel]:
        return [c for c in self.commands if isinstance(c, protocol.Cancel)]

    def send(self, command: protocol.Command) -> None:
        """The flow's `send`."""
        self.commands.append(command)
        if isinstance(command, protocol.Submit):
            self._unanswered[command.prompt_id] = command
            if not self.hold:
                self._later(self.answer, command.prompt_id)
        elif isinstance(command, protocol.Cancel):
            for prompt_id in command.prompt_ids:
                submit = self._unanswered.pop(prompt_id, None)
                if submit is not None:
                    self._later(self.deliver, *_ended(submit, command.reason))

    async def idle(self) -> None:
        """Return once every reply scheduled so far (and any they led to) was delivered."""
        while self._scheduled:
            self._idle.clear()
            await self._idle.wait()

    def _later(self, action: Callable[..., None], *args: Any) -> None:
        """Run `action(*args)` on the loop once the sending code yields, as a reply from the worker would come."""
        self._scheduled += 1

        def run() -> None:
            try:
                action(*args)
            finally:
                self._scheduled -= 1
                if not self._scheduled:
                    self._idle.set()

        asyncio.get_running_loop().call_soon(run)

    def answer(self, prompt_id: str) -> None:
        """Answer a prompt sent down (and not yet answered nor cancelled) with the script's replies."""
        submit = self._unanswered.pop(prompt_id, None)
        if submit is not None:
            self.deliver(*self.script(submit))

    def deliver(self, *replies: protocol.Reply) -> None:
        """Hand replies to the flow, as `WorkerLink` routes them and `LlamaParent` follows a `Finished` up."""
        assert self.flow is not None, "FakeParent(worker) connects the flow"
        for reply in replies:
            if isinstance(reply, protocol.Started):
                self.flow.started(reply.prompt_id)
            elif isinstance(reply, protocol.Tokens):
                self.flow.tokens(reply)
            elif isinstance(reply, protocol.Finished):
                self.flow.finished(reply)
                self.flow.dispatch()
            else:
                raise AssertionError(f"a prompt's replies are Started, Tokens and Finished, not {reply!r}")


def _ended(submit: protocol.Submit, reason: protocol.CancelReason) -> list[protocol.Reply]:
    """How the worker ends a cancelled prompt: each choice, choice 0 last."""
    ends: list[protocol.Reply] = [
        protocol.Finished(prompt_id=submit.prompt_id, finish_reason=reason, choice=c) for c in range(1, submit.n)
    ]
    ends.append(protocol.Finished(prompt_id=submit.prompt_id, finish_reason=reason, forks=submit.n - 1))
    return ends


@dataclass(eq=False)
class FakeScope:
    """A conversation as a `PromptFlow` sees a scope: an id, its messages, its own streams."""

    id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    trim_history: bool = True
    stream: TokenStream = field(default_factory=TokenStream)
    token_logprobs: EventStream[TokenLogprob] = field(default_factory=EventStream)
    tool_call_deltas: EventStream[ToolCallDelta] = field(default_factory=EventStream)
    completions: EventStream[CompletionEvent] = field(default_factory=EventStream)


class FakeParent:
    """A `PromptFlow` wired as `LlamaParent` wires it (its streams, send then dispatch), to a `FakeWorker`.

    `events` are every completion event, in the order they were emitted.
    """

    def __init__(self, worker: FakeWorker, *, slots: int = 2, keep_completed: int = 100) -> None:
        self.worker = worker
        self.default_scope = FakeScope("default")  # as `LlamaParent.default_scope`: the parent's own conversation
        self.stream = TokenStream()
        self.completions: EventStream[CompletionEvent] = EventStream()
        self.token_logprobs: EventStream[TokenLogprob] = EventStream()
        self.tool_call_deltas: EventStream[ToolCallDelta] = EventStream()
        self.flow = PromptFlow(
            LlamaLoad(path="fake.gguf", context_params=ContextParams(n_parallel=slots)),
            max_queue=None,
            keep_completed=keep_completed,
            streams=self,
            send=worker.send,
            tool_format=lambda: "hermes",
        )
        worker.flow = self.flow
        self.events: list[CompletionEvent] = []
        self.completions.listen(self.events.append)

    def send(self, text: str, scope: FakeScope | None = None, *, n: int = 1) -> str:
        """Queue a prompt and start what may start, as `LlamaParent.send_prompt` does; returns its id."""
        record = self.flow.enqueue(text, scope or self.default_scope, PromptOptions(n=n))
        self.flow.dispatch()
        return record.id

    async def wait(self, prompt_id: str) -> CompletionEvent:
        return await self.flow.ledger.wait(prompt_id)

    def events_of(self, prompt_id: str) -> list[CompletionEvent]:
        return [e for e in self.events if e.prompt_id == prompt_id]


# ---------------------------------------------------------------------------------------------- processes

INFO = ModelInfo("fake", 1, 2, 3, 4, 5, 6, True)


class FakeProcess:
    """Stands in for `WorkerProcess` behind a `WorkerLink`: it loads at once and answers pings while `answering`.

    Each `Pong` carries `progress`, which grows by one per ping while `advancing`.
    A kill ends it: its death is reported through `on_exit`, on the loop, as the real one's is.
    """

    _pids = itertools.count(10_000)

    def __init__(self, *, on_reply: Callable[[protocol.Reply], None], on_exit: Callable[[str], None]) -> None:
        self._on_reply = on_reply
        self._on_exit = on_exit
        self.pid = next(self._pids)
        self.alive = True
        self.answering = True
        self.advancing = False
        self.progress = 0
        self.pings = 0
        self.killed_because: str | None = None
        self._pinged = asyncio.Event()

    def send(self, command: protocol.Command) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(command, protocol.Load):
            loop.call_soon(self._on_reply, protocol.Loaded(INFO))
        elif isinstance(command, protocol.Ping):
            self.pings += 1
            self._pinged.set()
            if self.answering:
                if self.advancing:
                    self.progress += 1
                loop.call_soon(self._on_reply, protocol.Pong(command.request_id, self.progress))

    async def pinged(self, count: int) -> None:
        """Return once `count` pings came in all (answered or not)."""
        while self.pings < count:
            self._pinged.clear()
            await self._pinged.wait()

    def kill(self, because: str | None = None) -> None:
        if self.alive:
            self.alive = False
            self.killed_because = because
            asyncio.get_running_loop().call_soon(self._on_exit, f"the worker was killed because {because}")

    async def close(self, *, grace: float = 2.0) -> None:
        self.alive = False


class FakeProcesses:
    """A `WorkerLink(process_factory=...)`: starts `FakeProcess`es, the last one is `process`."""

    def __init__(self) -> None:
        self.started: list[FakeProcess] = []

    async def __call__(
        self, *, verbose: bool, on_reply: Callable[[protocol.Reply], None], on_exit: Callable[[str], None]
    ) -> FakeProcess:
        self.started.append(FakeProcess(on_reply=on_reply, on_exit=on_exit))
        return self.started[-1]

    @property
    def process(self) -> FakeProcess:
        return self.started[-1]
