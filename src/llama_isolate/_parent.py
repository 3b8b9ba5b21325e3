"""LlamaParent: the caller's side of the worker.

The parent owns everything the caller can see: the queue and its order, the
scopes and their chat histories, the streams and the completion events. The
worker owns everything llama.cpp. A prompt waits in the parent's queue until a
slot is free; only then is it sent down with its conversation, so a prompt
queued behind another of the same conversation sees that one's reply.

The parent keeps the status machine and wires two collaborators together:

- `PromptFlow`: a prompt's way from send to event (`PromptQueue` decides
  what starts, `Conversations` keep the turns, `CompletionLedger` emits one
  event per prompt);
- `WorkerLink`: the worker process, its requests, its death and liveness.

Nothing here blocks the event loop: commands are written to the socket's
buffer, and replies arrive through the link on the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict

from . import _protocol as protocol
from ._checks import check_images, check_int, check_text, plain
from ._client.completions import Ending
from ._client.conversations import split_last_turn, turns_of
from ._client.prompts import PromptFlow, with_markers
from ._client.queue import PromptRecord
from ._client.restarts import CrashRestarts
from ._client.worker_link import WorkerLink
from ._errors import LlamaFeatureNotEnabled, LlamaStatusError, LlamaTypeError, LlamaValueError, LlamaWorkerDied
from ._events import CompletionEvent, Embedding, LlamaStatus, ModelInfo, TokenLogprob, ToolCallDelta
from ._handle import PromptHandle
from ._images import MEDIA_MARKER, LlamaImage
from ._options import PromptFields, PromptOptions, options_of, takes_prompt_fields
from ._params import LlamaLoad
from ._restart import RestartPolicy
from ._scope import DEFAULT_SCOPE_ID, LlamaScope
from ._streams import EventStream, TokenStream

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger("llama_isolate")

_BASE_TIMEOUT_S = 60.0
_TIMEOUT_PER_GIB_S = 30.0


def default_init_timeout(path: str | os.PathLike[str]) -> float:
    """`init()`'s default deadline: 60 s plus 30 s per GiB of model file.

    A fixed deadline fails large models on slow disks; this one grows with the
    file (a 92 MiB model gets about 63 s, a 40 GiB one about 21 minutes).

    Example::

        timeout = default_init_timeout("model.gguf")
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        size = 0
    return _BASE_TIMEOUT_S + _TIMEOUT_PER_GIB_S * size / 2**30


class ParentSettings(TypedDict, total=False):
    """`LlamaParent`'s keywords, for the facades that pass them on (`SyncLlamaParent`)."""

    max_queue: int | None
    restart_on_crash: RestartPolicy | bool
    keep_completed: int
    liveness_timeout: float | None


class LlamaParent:
    """Runs a llama.cpp model in a worker process and queues prompts to it.

    Example::

        async with LlamaParent(LlamaLoad(path=default_model_path())) as parent:
            pid = await parent.send_prompt("Why is the sky blue?")
            sub = parent.stream.listen(lambda t: print(t, end="", flush=True))
            event = await parent.wait_for_completion(pid)
            sub.cancel()

    A parent belongs to the event loop that ran `init()`; using it from
    another loop raises `LlamaStatusError`.

    Args:
        load: the model and its parameters.
        max_queue: most prompts waiting to start; a send beyond it raises
            `LlamaQueueFull`. None = unbounded.
        restart_on_crash: when the worker dies, start a new one and carry on
            with the prompts still queued (the running ones fail): a
            `RestartPolicy` says how often and how far apart to try before
            giving up; True = `RestartPolicy()` (5 attempts in a row, 1 s
            apart and then doubling), False = never.
        keep_completed: how many finished events `wait_for_completion` still
            returns after the fact (the most recent ones); an older id raises
            KeyError. Keeps a long-running parent's memory flat.
        liveness_timeout: seconds a worker with work may leave a ping
            unanswered before it counts as dead (stopped with SIGSTOP, or
            frozen); it is then killed and handled like a crash. An engine
            that answers but takes no step and prepares no prompt for 6 times
            this (60 s by default) while it has work is stuck, and handled the
            same way. None = never.
    """

    def __init__(
        self,
        load: LlamaLoad,
        *,
        max_queue: int | None = None,
        restart_on_crash: RestartPolicy | bool = False,
        keep_completed: int = 1024,
        liveness_timeout: float | None = 10.0,
    ) -> None:
        if not isinstance(load, LlamaLoad):
            raise LlamaTypeError(f"LlamaParent needs a LlamaLoad, got {type(load).__name__}", param="load")
        if max_queue is not None:
            check_int(max_queue, "max_queue", 1)
        check_int(keep_completed, "keep_completed", 0)
        if liveness_timeout is not None and (
            not isinstance(liveness_timeout, (int, float))
            or isinstance(liveness_timeout, bool)
            or liveness_timeout <= 0
        ):
            raise LlamaValueError(
                f"liveness_timeout must be None or a number of seconds > 0, got {liveness_timeout!r}",
                param="liveness_timeout",
            )
        if not isinstance(restart_on_crash, (RestartPolicy, bool)):
            raise LlamaTypeError(
                f"restart_on_crash must be a RestartPolicy or a bool, got {restart_on_crash!r}",
                param="restart_on_crash",
            )
        policy = restart_on_crash if isinstance(restart_on_crash, RestartPolicy) else RestartPolicy()
        self._load = load
        self._restarts = None if restart_on_crash is False else CrashRestarts(policy)
        self._restarting = False
        self._restart_task: asyncio.Task[None] | None = None
        self._status = LlamaStatus.UNINITIALIZED
        self._error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._info: ModelInfo | None = None
        self._scopes: dict[str, LlamaScope] = {}
        self.default_scope = LlamaScope(self, scope_id=DEFAULT_SCOPE_ID)
        """The parent's own conversation, a scope like any other (id ``"default"``): what `send_prompt` uses when
        no scope is given, and whose history is `messages`. It lives as long as the parent."""
        self._scopes[self.default_scope.id] = self.default_scope
        self.stream = TokenStream()
        """Every generated piece of text, from every prompt and scope."""
        self.completions: EventStream[CompletionEvent] = EventStream()
        """One `CompletionEvent` per finished prompt."""
        self.token_logprobs: EventStream[TokenLogprob] = EventStream()
        """Each generated token of prompts sent with ``logprobs=k``, from every scope, as a `TokenLogprob`."""
        self.tool_call_deltas: EventStream[ToolCallDelta] = EventStream()
        """The tool calls of prompts sent with ``tools=``, from every scope, as they are written (`ToolCallDelta`)."""
        self._flow = PromptFlow(
            load,
            max_queue=max_queue,
            keep_completed=keep_completed,
            streams=self,
            send=lambda command: self._link.send(command),  # noqa: PLW0108 - the link is made next
            tool_format=lambda: "hermes" if self._info is None else self._info.tool_format,
        )
        self._link = WorkerLink(
            load,
            on_started=self._flow.started,
            on_tokens=self._flow.tokens,
            on_finished=self._on_finished,
            on_fault=self._on_fault,
            on_exit=self._on_exit,
            has_work=lambda: bool(self._flow.queue.running),
            liveness_timeout=liveness_timeout,
        )

    # ------------------------------------------------------------------ facts

    @property
    def load(self) -> LlamaLoad:
        """The `LlamaLoad` this parent was made with."""
        return self._load

    @property
    def status(self) -> LlamaStatus:
        """The worker's state; see `LlamaStatus`."""
        return self._status

    @property
    def error(self) -> str | None:
        """Why the status is ERROR (the worker's death, or the failed load); None in any other status."""
        return self._error if self._status is LlamaStatus.ERROR else None

    @property
    def is_generating(self) -> bool:
        """True while any prompt is being decoded."""
        return bool(self._flow.queue.running)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The default conversation's chat history (``{"role", "content"}`` dicts).

        A prompt's user turn is appended when it starts, its reply when it ends.
        The list may be edited between prompts (for example to put a system
        message first); it is checked when a prompt is sent and read when it
        starts.
        """
        return self.default_scope.messages

    @property
    def queue_length(self) -> int:
        """Prompts waiting to start."""
        return len(self._flow.queue)

    @property
    def worker_pid(self) -> int | None:
        """The worker process's id while it runs, else None."""
        return self._link.pid

    @property
    def model_info(self) -> ModelInfo | None:
        """Facts about the loaded model (size, context, embedding length), once ready."""
        return self._info

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> LlamaParent:
        await self.init()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.dispose()

    async def init(self, *, timeout: float | None = None, on_progress: Callable[[float], object] | None = None) -> None:
        """Spawn the worker and load the model; returns when it is ready.

        Args:
            timeout: seconds to allow for start and load; default
                `default_init_timeout(path)` (grows with the model's size).
            on_progress: called on the event loop with the fraction of the
                weights loaded, 0.0 to 1.0, from llama.cpp's progress callback
                (for a progress bar).

        Raises:
            LlamaLoadError: a subclass naming why (`LlamaModelNotFound`,
                `LlamaInvalidModel`, `LlamaOutOfMemory`, `LlamaLoadTimeout`,
                `LlamaWorkerDiedOnLoad`); no worker is left running.
            LlamaStatusError: `init()` was called before.

        Cancellation: cancelling the awaiting task kills the worker; the status
        becomes ERROR and `restart()` may try again.

        Example::

            await parent.init(timeout=120)
        """
        if self._status is not LlamaStatus.UNINITIALIZED:
            raise LlamaStatusError(f"init() can be called once; the parent is {self._status.value}")
        self._loop = asyncio.get_running_loop()
        await self._start_worker(timeout, on_progress)

    async def restart(self, *, timeout: float | None = None) -> None:
        """Start a fresh worker with the same `LlamaLoad` after an ERROR.

        Queued prompts carry on once it is ready. Raises like `init()`;
        `LlamaStatusError` unless the status is ERROR.

        Example::

            if parent.status is LlamaStatus.ERROR:
                await parent.restart()
        """
        self._check_loop("restart")
        if self._status is not LlamaStatus.ERROR:
            raise LlamaStatusError(f"restart() is for a parent in ERROR; it is {self._status.value}")
        await self._start_worker(timeout, None)
        self._dispatch()

    async def _start_worker(self, timeout: float | None, on_progress: Callable[[float], object] | None) -> None:
        deadline = default_init_timeout(self._load.path) if timeout is None else timeout
        self._status = LlamaStatus.LOADING
        self._error = None
        try:
            self._info = await self._link.start(deadline, on_progress)
        except BaseException as exc:
            if self._status is not LlamaStatus.DISPOSED:
                self._status = LlamaStatus.ERROR
                self._error = str(exc) or type(exc).__name__
            raise
        self._status = LlamaStatus.READY
        if self._info is not None and self._info.flash_attention_note:
            logger.info("%s: %s", os.path.basename(self._load.path), self._info.flash_attention_note)

    async def dispose(self) -> None:
        """Stop everything, fail what is still queued, end the worker; idempotent.

        Every prompt not yet finished gets a completion event with
        ``finish_reason="cancelled"``; then all streams close.

        Cancellation: if the awaiting task is cancelled, the worker is killed
        at once and the parent is still disposed.

        Example::

            await parent.dispose()
            assert parent.status is LlamaStatus.DISPOSED
        """
        if self._status is LlamaStatus.DISPOSED:
            return
        self._check_loop("dispose")
        self._status = LlamaStatus.DISPOSED
        reason = "the parent was disposed"
        self._link.cancel_start(LlamaStatusError("dispose() was called while init() was loading"))
        restarting, self._restarting = self._restart_task, False
        if self._restarts is not None:
            self._restarts.stop()  # a backoff wait ends now, and no attempt follows
        for record in self._flow.queue.remove_waiting(lambda _: True):
            self._flow.end(record, Ending("cancelled"))
        try:
            if restarting is not None and restarting is not asyncio.current_task():
                await asyncio.wait({restarting})  # it closes a worker that loaded just before dispose()
            if self._flow.queue.running:
                self._link.send(protocol.Cancel(tuple(self._flow.queue.running), "cancelled"))
            await self._link.close(grace=5.0)
        finally:
            self._flow.end_all("cancelled")
            self._link.fail_requests(LlamaStatusError(reason))
            for scope in list(self._scopes.values()):
                scope._close()
            self.stream._close()
            self.completions._close()
            self.token_logprobs._close()
            self.tool_call_deltas._close()

    # ------------------------------------------------------------------ prompts

    @takes_prompt_fields
    async def send_prompt(
        self,
        prompt: str,
        *,
        scope: LlamaScope | None = None,
        options: PromptOptions | None = None,
        **overrides: Unpack[PromptFields],
    ) -> str:
        """Queue one chat turn and return its prompt id at once, without waiting for it to start.

        Prompts start in the order they were sent. Subscribing to a stream
        right after this returns sees every token of the prompt. The turn
        and its reply join the conversation: `scope`'s `messages`, or the
        parent's own `messages`.

        Args:
            prompt: the user's message (or, with ``tool_call_id``, a tool's result).
            scope: the conversation (default: `default_scope`, whose history is `messages`).
            options: how to answer (`PromptOptions`, where each field is documented).
            **overrides: fields of `PromptOptions` by name, over `options`:
                ``sampler_params``, ``max_tokens``, ``raw``, ``json_schema``,
                ``logprobs``, ``tools``, ``tool_choice``, ``tool_call_id``,
                ``n``, ``images``, ``stop``, ``trim_history``.

        Raises:
            LlamaStatusError: before `init()`, after `dispose()`, after the worker
                died, or from an event loop other than the parent's.
            LlamaQueueFull: `max_queue` prompts are already waiting.
            LlamaFeatureNotEnabled: images without ``LlamaLoad(mmproj_path=...)``.
            ValueError: a bad argument, or a malformed entry in the
                conversation's `messages` (the message names it).
            LlamaSchemaError: `json_schema` cannot be enforced (a `ValueError` too).
            TypeError: an argument of the wrong type, or an unknown keyword.

        Cancellation: this never suspends, so it cannot be cancelled half-way.

        Example::

            pid = await parent.send_prompt("Hello!", max_tokens=64)
        """
        return self._scope_send(scope or self.default_scope, prompt, options_of(options, overrides, "send_prompt"))

    @takes_prompt_fields
    async def send_prompt_with_images(
        self,
        prompt: str,
        images: Sequence[LlamaImage],
        /,
        *,
        scope: LlamaScope | None = None,
        options: PromptOptions | None = None,
        **overrides: Unpack[PromptFields],
    ) -> str:
        """``send_prompt(prompt, images=images, ...)``: a turn with images; needs `LlamaLoad(mmproj_path=...)`.

        Each image goes where the prompt has llama.cpp's media marker
        ``<__media__>`` (`MEDIA_MARKER`), in order; a prompt without markers
        gets the images before its text. The user turn in `messages` keeps
        the markers and an ``"images"`` entry, so later turns can show the
        model the same conversation; the images stay in the scope's KV cache,
        so a follow-up question about them does not encode them again. The
        marker in a turn without images is plain text.

        Raises:
            LlamaFeatureNotEnabled: the load has no `mmproj_path`.
            ValueError: the prompt has markers, but not one per image; an image
                is larger than `LlamaLoad.max_image_pixels`; or, on a model
                without a chat template, the prompt ends with an image.
            TypeError: `images` is empty or holds something else than `LlamaImage`.

        An image that cannot be decoded fails only this prompt, with an error
        naming it; so does a prompt whose images do not fit the context.

        Example::

            pid = await parent.send_prompt_with_images("Describe it.", [LlamaImage.from_file("a.png")])
        """
        chosen = self._image_options(options_of(options, overrides, "send_prompt_with_images"), images)
        return self._scope_send(scope or self.default_scope, prompt, chosen)

    @takes_prompt_fields
    def generate(
        self,
        messages_or_prompt: str | Sequence[Mapping[str, Any]],
        options: PromptOptions | None = None,
        **overrides: Unpack[PromptFields],
    ) -> PromptHandle:
        """Queue one prompt on a conversation of its own and return its `PromptHandle` at once.

        Nothing is kept after it ends: neither the parent's `messages` nor a
        scope changes. The worker still finds the KV cache of an earlier
        prompt that began the same way (a previous turn, a shared system
        prompt) and reads only what is new.

        Args:
            messages_or_prompt: a user message (str), or a whole conversation
                as ``{"role", "content"}`` dicts whose last message is the
                one to answer: a ``user`` turn (its ``"images"`` entry, if
                any, are the prompt's images) or a ``tool`` turn (its
                ``tool_call_id`` says which call it answers).
            options, **overrides: as for `send_prompt`.

        Raises:
            like `send_prompt`; ValueError also when the conversation is empty
            or its last message is neither a user nor a tool turn.

        Example::

            async with parent.generate([{"role": "user", "content": "Hi"}], max_tokens=16) as handle:
                async for piece in handle:
                    print(piece, end="")
                print((await handle.event).finish_reason)
        """
        chosen = options_of(options, overrides, "generate")
        self._require_ready("generate", queueing=True)  # before the handle, which needs the running loop
        if isinstance(messages_or_prompt, str):
            prompt, history = messages_or_prompt, list[dict[str, Any]]()
        else:
            prompt, history, chosen = split_last_turn(messages_or_prompt, chosen)
        return self._generate(prompt, None, chosen, history)

    def _enqueue(
        self,
        what: str,
        prompt: str,
        scope: LlamaScope | None,
        options: PromptOptions,
        *,
        history: list[dict[str, Any]] | None = None,
        listener: PromptHandle | None = None,
    ) -> PromptRecord:
        self._require_ready(what, queueing=True)
        if scope is not None and (not isinstance(scope, LlamaScope) or scope.parent is not self or scope.disposed):
            raise LlamaStatusError(f"scope {getattr(scope, 'id', scope)!r} is disposed or belongs to another parent")
        if options.images:
            prompt, options = self._with_images(prompt, options)
        elif self._load.mmproj_path is None and _has_images(scope.messages if history is None and scope else history):
            raise LlamaFeatureNotEnabled("the conversation has images; they need LlamaLoad(mmproj_path=...)")
        if options.tools is not None and self._info is not None and not self._info.has_chat_template:
            raise LlamaValueError(
                "tools need a chat template to show them; this model has none (see chat_template)", param="tools"
            )
        sampler_params = options.sampler_params
        if sampler_params is not None and sampler_params.logit_bias and self._info is not None:
            top = max(token for token, _ in sampler_params.logit_bias)
            if top >= self._info.n_vocab:
                raise LlamaValueError(
                    f"SamplerParams.logit_bias names token {top}, outside the vocabulary (0..{self._info.n_vocab - 1})",
                    param="sampler_params.logit_bias",
                )
        prompt_id = None if listener is None else listener.id
        record = self._flow.enqueue(prompt, scope, options, history=history, listener=listener, prompt_id=prompt_id)
        self._dispatch()
        return record

    def _need_mmproj(self) -> None:
        if self._load.mmproj_path is None:
            raise LlamaFeatureNotEnabled("image prompts need LlamaLoad(mmproj_path=...) (a multimodal projector)")

    def _with_images(self, prompt: str, options: PromptOptions) -> tuple[str, PromptOptions]:
        """The prompt with one media marker per image, and the images checked; raises what `send_prompt` says."""
        self._need_mmproj()
        if options.raw:
            raise LlamaValueError(
                "images cannot be sent with raw=True: they go where the chat template puts them", param="images"
            )
        pictures = check_images(options.images, self._load.max_image_pixels)
        if isinstance(prompt, str):
            prompt = with_markers(prompt, len(pictures))
            if self._info is not None and not self._info.has_chat_template and prompt.endswith(MEDIA_MARKER):
                raise LlamaValueError(
                    "on a model without a chat template the prompt must not end with an image: "
                    "the model needs text after it to answer (put the marker before your question)",
                    param="prompt",
                )
        return prompt, dataclasses.replace(options, images=pictures)

    def _check_loop(self, what: str) -> None:
        if self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            raise LlamaStatusError(
                f"{what}() was called from another event loop ({running!r}); this parent belongs to the loop "
                f"that ran init() ({self._loop!r}). Use one LlamaParent per event loop."
            )

    def _require_ready(self, what: str, *, queueing: bool = False) -> None:
        self._check_loop(what)
        if self._status.is_ready:
            return
        if queueing and self._restarting:
            return  # queued now, dispatched once the new worker is ready
        if self._status is LlamaStatus.ERROR:
            raise LlamaStatusError(f"{what}() failed: the worker is in ERROR ({self._error}); call restart()")
        hint = {
            LlamaStatus.UNINITIALIZED: "call init() first",
            LlamaStatus.LOADING: "wait for init() to return",
            LlamaStatus.DISPOSED: "the parent was disposed",
        }[self._status]
        raise LlamaStatusError(f"{what}() is not allowed while the parent is {self._status.value}: {hint}")

    def _dispatch(self) -> None:
        """Start what may start, while a worker is there; the status follows what runs."""
        if not self._status.is_ready:
            return
        self._flow.dispatch()
        self._status = LlamaStatus.GENERATING if self._flow.queue.running else LlamaStatus.READY

    async def stop(self) -> None:
        """Abort every prompt being decoded now, also mid prompt processing.

        Their events have ``success=True, finish_reason="stopped"`` and the
        text generated so far; queued prompts stay queued. Returns once those
        events were emitted.

        Cancellation: cancelling the awaiting task does not undo the stop.

        Example::

            await parent.stop()
        """
        self._check_loop("stop")
        await self._flow.cancel_running(list(self._flow.queue.running), "stopped")

    async def wait_for_completion(self, prompt_id: str) -> CompletionEvent:
        """The `CompletionEvent` of `prompt_id`, also if it finished before this call.

        Raises:
            KeyError: this parent never issued `prompt_id`, or it finished so long
                ago that it is no longer among the last `keep_completed` events.
            LlamaStatusError: called from an event loop other than the parent's.

        Cancellation: cancelling the wait does not cancel the prompt.

        Example::

            event = await parent.wait_for_completion(pid)
        """
        self._check_loop("wait_for_completion")
        return await self._flow.ledger.wait(prompt_id)

    async def embed(self, text: str, *, normalize: bool = False) -> Embedding:
        """Like `get_embeddings`, with the number of tokens the text took.

        Example::

            result = await parent.embed("a sentence", normalize=True)
            print(len(result.vector), result.tokens)
        """
        answer = await self._embed(text, normalize, "embed")
        return Embedding(list(answer.vector), answer.tokens)

    async def cached_tokens(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """How many tokens of the prompt `messages` make (ready for the reply) a KV cache of the worker holds.

        Counted from the prompt's start, in the cache that holds the most of
        it: a slot's, or one parked in RAM, whichever conversation left it.
        A prompt with these messages would reuse that many tokens. A router
        over several parents asks each, to send a conversation where its
        cache is. Cheap: the worker renders and tokenizes the messages
        between two decode steps, and nothing changes.

        Raises:
            ValueError: a malformed message (naming it).
            LlamaRequestError: the chat template refused the conversation.
            LlamaStatusError, LlamaWorkerDied: no ready worker.

        Example::

            held = await parent.cached_tokens([{"role": "user", "content": "Hi"}])
        """
        self._require_ready("cached_tokens")
        tool_format = "hermes" if self._info is None else self._info.tool_format
        turns = turns_of(messages, tool_format)
        answer = await self._link.request(lambda rid: protocol.Probe(rid, turns), protocol.Probed)
        return answer.cached

    async def get_embeddings(self, text: str, *, normalize: bool = False) -> list[float]:
        """The embedding vector of `text` (length: the model's embedding size).

        Needs ``ContextParams(embeddings=True)``. Embeddings are computed
        between decode steps, without waiting for the prompt queue.

        Args:
            text: the text to embed (at most `n_ubatch` tokens).
            normalize: scale the vector to unit length.

        Raises:
            LlamaFeatureNotEnabled: embeddings are not enabled.
            LlamaRequestError: the text is empty or too long.
            ValueError: the text is not valid UTF-8 text (a lone surrogate).
            LlamaStatusError, LlamaWorkerDied: no ready worker.

        Cancellation: cancelling the await abandons the result; the worker
        still computes it.

        Example::

            vector = await parent.get_embeddings("a sentence", normalize=True)
        """
        return list((await self._embed(text, normalize, "get_embeddings")).vector)

    async def _embed(self, text: str, normalize: bool, what: str) -> protocol.Embedding:
        self._require_ready(what)
        if not isinstance(text, str):
            raise LlamaTypeError(f"text must be a str, got {type(text).__name__}", param="text")
        text = plain(check_text(text, "text"))  # a str subclass would not cross to the worker
        if not self._load.context_params.embeddings or self._load.model_params.vocab_only:
            raise LlamaFeatureNotEnabled(f"{what}() needs LlamaLoad(context_params=ContextParams(embeddings=True))")
        return await self._link.request(lambda rid: protocol.Embed(rid, text, normalize), protocol.Embedding)

    def get_scope(self) -> LlamaScope:
        """A new conversation on this parent, with its own history and streams.

        Example::

            scope = parent.get_scope()
            await scope.send_prompt("Hello!")
        """
        if self._status is LlamaStatus.DISPOSED:
            raise LlamaStatusError("get_scope() is not allowed: the parent was disposed")
        scope = LlamaScope(self)
        self._scopes[scope.id] = scope
        return scope

    # ------------------------------------------------------------------ the scopes' surface (see ScopeHost)

    def _scope_send(self, scope: LlamaScope, prompt: str, options: PromptOptions) -> str:
        """Queue a turn of `scope`."""
        return self._enqueue("send_prompt", prompt, scope, options).id

    def _image_options(self, options: PromptOptions, images: Sequence[LlamaImage]) -> PromptOptions:
        """`options` with `send_prompt_with_images`'s images (which must name some), checked."""
        self._need_mmproj()  # before the images are checked: an empty list on such a load is refused for this
        return dataclasses.replace(options, images=check_images(images, self._load.max_image_pixels))

    def _scope_generate(self, scope: LlamaScope, prompt: str, options: PromptOptions) -> PromptHandle:
        self._require_ready("generate", queueing=True)
        return self._generate(prompt, scope, options)

    def _generate(
        self,
        prompt: str,
        scope: LlamaScope | None,
        options: PromptOptions,
        history: list[dict[str, Any]] | None = None,
    ) -> PromptHandle:
        """Queue a prompt with a handle (the caller checked that the parent is ready: the handle needs the loop)."""
        handle = PromptHandle(uuid.uuid4().hex, self._flow.cancel_prompt)
        self._enqueue("generate", prompt, scope, options, history=history, listener=handle)
        return handle

    async def _scope_stop(self, scope: LlamaScope) -> None:
        self._check_loop("stop")
        await self._flow.stop_scope(scope)

    def _scope_forget(self, scope: LlamaScope, *, disposed: bool) -> None:
        self._link.send(protocol.DropScope(scope.id))
        if disposed:
            self._scopes.pop(scope.id, None)

    def _scope_idle(self, scope: LlamaScope, what: str) -> None:
        self._require_ready(what)
        if scope.disposed:
            raise LlamaStatusError(f"{what}() is not allowed: scope {scope.id} is disposed")
        if self._flow.queue.has_scope(scope.id):
            raise LlamaStatusError(f"{what}() needs the scope idle: wait for its prompts or stop() it first")

    async def _scope_save_kv(self, scope: LlamaScope) -> tuple[tuple[int, ...], bytes]:
        answer = await self._link.request(lambda rid: protocol.SaveScope(rid, scope.id), protocol.ScopeState)
        return answer.tokens, answer.data

    async def _scope_load_kv(self, scope: LlamaScope, tokens: tuple[int, ...], data: bytes) -> None:
        await self._link.request(lambda rid: protocol.LoadScope(rid, scope.id, tokens, data), protocol.RequestDone)

    # ------------------------------------------------------------------ replies (from the link)

    def _on_finished(self, reply: protocol.Finished) -> None:
        self._flow.finished(reply)
        self._dispatch()

    def _on_fault(self, prompt_id: str, error: str) -> None:
        self._flow.fault(prompt_id, error)
        self._dispatch()

    def _on_exit(self, description: str) -> None:
        if self._status in (LlamaStatus.DISPOSED, LlamaStatus.ERROR, LlamaStatus.LOADING):
            return  # dispose(), or a start that reports its own failure
        logger.error("llama_isolate worker died: %s", description)
        message = f"the worker process died: {description}"
        self._status = LlamaStatus.ERROR
        self._error = message
        self._flow.end_running("error", message, "worker_died")
        if self._restarts is not None:
            self._restarting = True  # sends are queued from now on
            self._restart_task = asyncio.get_running_loop().create_task(self._restart_after_crash(message))
        else:
            self._fail_unfinished(message)

    async def _restart_after_crash(self, crash: str) -> None:
        assert self._restarts is not None
        try:
            gave_up = await self._restarts.run(crash, self.restart, lambda: self._status is LlamaStatus.ERROR)
        finally:
            self._restarting = False
        if self._restarts.stopped:  # dispose() came while a worker was loading, which then loaded: it goes too
            self._status = LlamaStatus.DISPOSED
            await self._link.close(grace=5.0)
        elif gave_up is not None:
            self._error = gave_up
            self._fail_unfinished(gave_up)

    def _fail_unfinished(self, message: str) -> None:
        self._flow.end_all("error", message, "worker_died")
        self._link.fail_requests(LlamaWorkerDied(message))


def _has_images(messages: object) -> bool:
    """Whether a conversation (as given: it is checked after) has a message with well-formed images; a malformed
    images entry is left to the conversation's check, which names it."""
    return isinstance(messages, list) and any(_shows_images(m) for m in messages)


def _shows_images(message: object) -> bool:
    images = message.get("images") if isinstance(message, dict) else None
    return isinstance(images, (list, tuple)) and bool(images) and all(isinstance(i, LlamaImage) for i in images)
