"""LlamaParent: the caller's side of the worker.

The parent owns everything the caller can see: the queue and its order, the
scopes and their chat histories, the streams and the completion events. The
worker owns everything llama.cpp. A prompt waits in the parent's queue until a
slot is free; only then is it sent down with its conversation, so a prompt
queued behind another of the same conversation sees that one's reply.

Nothing here blocks the event loop: commands are written to the socket's
buffer, replies arrive through one reader task, and token callbacks run on the
loop as the reader hands them out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _protocol as protocol
from ._errors import (
    LlamaError,
    LlamaFeatureNotEnabled,
    LlamaInvalidMmproj,
    LlamaInvalidModel,
    LlamaLoadError,
    LlamaLoadTimeout,
    LlamaModelNotFound,
    LlamaOutOfMemory,
    LlamaQueueFull,
    LlamaRequestError,
    LlamaStatusError,
    LlamaWorkerDied,
    LlamaWorkerDiedOnLoad,
)
from ._events import CompletionEvent, CompletionTimings, FinishReason, LlamaStatus
from ._images import MEDIA_MARKER, LlamaImage
from ._params import LlamaLoad, SamplerParams
from ._streams import EventStream, TokenStream
from ._transport import WorkerProcess

if TYPE_CHECKING:
    from ._scope import LlamaScope

logger = logging.getLogger("llama_isolate")

_LOAD_ERRORS: dict[str, type[LlamaLoadError]] = {
    "not_found": LlamaModelNotFound,
    "invalid_model": LlamaInvalidModel,
    "invalid_mmproj": LlamaInvalidMmproj,
    "out_of_memory": LlamaOutOfMemory,
}
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


@dataclass(eq=False)
class _Prompt:
    """The parent's record of one prompt, from send to completion event."""

    id: str
    scope: LlamaScope | None
    text: str
    sampler: SamplerParams
    max_tokens: int
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    first_token: float | None = None
    pieces: list[str] = field(default_factory=list)
    history_len: int | None = None  # len(history) before our user turn, once dispatched
    images: tuple[LlamaImage, ...] = ()

    @property
    def scope_key(self) -> str:
        return "" if self.scope is None else self.scope.id


class LlamaParent:
    """Runs a llama.cpp model in a worker process and queues prompts to it.

    Example::

        async with LlamaParent(LlamaLoad(path=default_model_path())) as parent:
            pid = await parent.send_prompt("Why is the sky blue?")
            sub = parent.stream.listen(lambda t: print(t, end="", flush=True))
            event = await parent.wait_for_completion(pid)
            sub.cancel()

    Args:
        load: the model and its parameters.
        max_queue: most prompts waiting to start; a send beyond it raises
            `LlamaQueueFull`. None = unbounded.
        restart_on_crash: when the worker dies, start a new one and carry on
            with the prompts still queued (the running ones fail).
        keep_completed: how many finished events `wait_for_completion` still
            returns after the fact (the most recent ones); an older id raises
            KeyError. Keeps a long-running parent's memory flat.
    """

    def __init__(
        self,
        load: LlamaLoad,
        *,
        max_queue: int | None = None,
        restart_on_crash: bool = False,
        keep_completed: int = 1024,
    ) -> None:
        if not isinstance(load, LlamaLoad):
            raise TypeError(f"LlamaParent needs a LlamaLoad, got {type(load).__name__}")
        if max_queue is not None and (not isinstance(max_queue, int) or isinstance(max_queue, bool) or max_queue < 1):
            raise ValueError(f"max_queue must be None or an int >= 1, got {max_queue!r}")
        if not isinstance(keep_completed, int) or isinstance(keep_completed, bool) or keep_completed < 0:
            raise ValueError(f"keep_completed must be an int >= 0, got {keep_completed!r}")
        self._keep_completed = keep_completed
        self._load = load
        self._max_queue = max_queue
        self._restart_on_crash = restart_on_crash
        self._restarting = False
        self._restart_task: asyncio.Task[None] | None = None
        self._on_progress: Callable[[float], object] | None = None
        self._status = LlamaStatus.UNINITIALIZED
        self._error: str | None = None
        self._worker: WorkerProcess | None = None
        self._info: protocol.ModelInfo | None = None
        self._handshake: asyncio.Future[protocol.Loaded] | None = None
        self._queue: collections.deque[_Prompt] = collections.deque()
        self._running: dict[str, _Prompt] = {}
        self._futures: dict[str, asyncio.Future[CompletionEvent]] = {}
        # Finished events for wait_for_completion(), oldest first, at most keep_completed.
        self._events: collections.OrderedDict[str, CompletionEvent] = collections.OrderedDict()
        self._requests: dict[int, asyncio.Future[object]] = {}
        self._request_ids = itertools.count(1)
        self._scopes: dict[str, LlamaScope] = {}
        self._messages: list[dict[str, Any]] = []
        self.stream = TokenStream()
        """Every generated piece of text, from every prompt and scope."""
        self.completions: EventStream[CompletionEvent] = EventStream()
        """One `CompletionEvent` per finished prompt."""

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
    def is_generating(self) -> bool:
        """True while any prompt is being decoded."""
        return bool(self._running)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The default conversation's chat history (``{"role", "content"}`` dicts).

        A prompt's user turn is appended when it starts, its reply when it ends.
        The list may be edited between prompts (for example to put a system
        message first); it is read when the next prompt starts.
        """
        return self._messages

    @property
    def queue_length(self) -> int:
        """Prompts waiting to start."""
        return len(self._queue)

    @property
    def worker_pid(self) -> int | None:
        """The worker process's id while it runs, else None."""
        worker = self._worker
        return worker.pid if worker is not None and worker.alive else None

    @property
    def model_info(self) -> protocol.ModelInfo | None:
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
        self._on_progress = on_progress
        try:
            await self._start_worker(timeout)
        finally:
            self._on_progress = None

    async def restart(self, *, timeout: float | None = None) -> None:
        """Start a fresh worker with the same `LlamaLoad` after an ERROR.

        Queued prompts carry on once it is ready. Raises like `init()`;
        `LlamaStatusError` unless the status is ERROR.

        Example::

            if parent.status is LlamaStatus.ERROR:
                await parent.restart()
        """
        if self._status is not LlamaStatus.ERROR:
            raise LlamaStatusError(f"restart() is for a parent in ERROR; it is {self._status.value}")
        await self._start_worker(timeout)
        self._dispatch()

    async def _start_worker(self, timeout: float | None) -> None:
        deadline = default_init_timeout(self._load.path) if timeout is None else timeout
        self._status = LlamaStatus.LOADING
        self._error = None
        loop = asyncio.get_running_loop()
        self._handshake = loop.create_future()
        try:
            self._worker = await WorkerProcess.spawn(
                verbose=self._load.verbose, on_reply=self._on_reply, on_exit=self._on_exit
            )
            self._worker.send(protocol.Load(self._load))
            # asyncio.wait, not wait_for, which can swallow a cancellation on Python < 3.12.
            done, _ = await asyncio.wait({self._handshake}, timeout=deadline)
            if not done:
                raise LlamaLoadTimeout(
                    f"the model did not load within {deadline:.0f} s; pass init(timeout=...) to allow more"
                )
            loaded = self._handshake.result()
        except BaseException as exc:
            await self._abandon_worker()
            if self._status is not LlamaStatus.DISPOSED:
                self._status = LlamaStatus.ERROR
                self._error = str(exc) or type(exc).__name__
            raise
        finally:
            self._handshake = None
        self._info = loaded.info
        self._status = LlamaStatus.READY

    async def _abandon_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill()
            with contextlib.suppress(Exception):
                await worker.close(grace=2.0)

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
        self._status = LlamaStatus.DISPOSED
        reason = "the parent was disposed"
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(LlamaStatusError("dispose() was called while init() was loading"))
        while self._queue:
            self._complete(self._queue.popleft(), "cancelled")
        worker, self._worker = self._worker, None
        if worker is not None:
            try:
                if self._running:
                    worker.send(protocol.Cancel(tuple(self._running), "cancelled"))
                await worker.close(grace=5.0)
            except BaseException:
                worker.kill()
                raise
            finally:
                self._fail_unfinished("cancelled", reason, LlamaStatusError(reason))
                self._close_streams()
        else:
            self._close_streams()

    def _close_streams(self) -> None:
        for scope in list(self._scopes.values()):
            scope._close()
        self.stream._close()
        self.completions._close()

    # ------------------------------------------------------------------ prompts

    async def send_prompt(
        self,
        prompt: str,
        *,
        scope: LlamaScope | None = None,
        sampler_params: SamplerParams | None = None,
        max_tokens: int | None = None,
    ) -> str:
        """Queue one chat turn and return its prompt id at once, without waiting for it to start.

        Prompts start in the order they were sent. Subscribing to a stream
        right after this returns sees every token of the prompt.

        Args:
            prompt: the user's message.
            scope: the conversation (default: the parent's own `messages`).
            sampler_params: overrides `LlamaLoad.sampler_params` for this prompt.
            max_tokens: most tokens to generate (default `ContextParams.n_predict`).

        Raises:
            LlamaStatusError: before `init()`, after `dispose()`, or after the worker died.
            LlamaQueueFull: `max_queue` prompts are already waiting.
            ValueError, TypeError: a bad argument.

        Cancellation: this never suspends, so it cannot be cancelled half-way.

        Example::

            pid = await parent.send_prompt("Hello!", max_tokens=64)
        """
        return self._enqueue(prompt, scope, sampler_params, max_tokens, images=())

    async def send_prompt_with_images(
        self,
        prompt: str,
        images: Sequence[LlamaImage],
        *,
        scope: LlamaScope | None = None,
        sampler_params: SamplerParams | None = None,
        max_tokens: int | None = None,
    ) -> str:
        """Like `send_prompt`, with images; needs `LlamaLoad(mmproj_path=...)`.

        Each image goes where the prompt has llama.cpp's media marker
        ``<__media__>`` (`MEDIA_MARKER`), in order; a prompt without markers
        gets the images before its text. The user turn in `messages` keeps
        the markers and an ``"images"`` entry, so later turns can show the
        model the same conversation; the images stay in the scope's KV cache,
        so a follow-up question about them does not encode them again.

        Raises:
            LlamaFeatureNotEnabled: the load has no `mmproj_path`.
            ValueError: the prompt has markers, but not one per image.
            TypeError: `images` is empty or holds something else than `LlamaImage`.

        An image that cannot be decoded fails only this prompt, with an error
        naming it; so does a prompt whose images do not fit the context.

        Example::

            pid = await parent.send_prompt_with_images("Describe it.", [LlamaImage.from_file("a.png")])
        """
        if self._load.mmproj_path is None:
            raise LlamaFeatureNotEnabled("image prompts need LlamaLoad(mmproj_path=...) (a multimodal projector)")
        if isinstance(images, LlamaImage):
            images = [images]
        if not images or not all(isinstance(image, LlamaImage) for image in images):
            raise TypeError("images must be a non-empty sequence of LlamaImage")
        if isinstance(prompt, str):
            markers = prompt.count(MEDIA_MARKER)
            if markers == 0:
                prompt = "".join(f"{MEDIA_MARKER}\n" for _ in images) + prompt
            elif markers != len(images):
                raise ValueError(f"the prompt has {markers} image markers ({MEDIA_MARKER}) for {len(images)} images")
        return self._enqueue(prompt, scope, sampler_params, max_tokens, images=tuple(images))

    def _enqueue(
        self,
        prompt: str,
        scope: LlamaScope | None,
        sampler_params: SamplerParams | None,
        max_tokens: int | None,
        images: tuple[LlamaImage, ...],
    ) -> str:
        self._require_ready("send_prompt", queueing=True)
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if scope is not None and (scope.parent is not self or scope.disposed):
            raise LlamaStatusError(f"scope {scope.id} is disposed or belongs to another parent")
        if sampler_params is not None and not isinstance(sampler_params, SamplerParams):
            raise TypeError(f"sampler_params must be a SamplerParams, got {type(sampler_params).__name__}")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"max_tokens must be None or an int >= 1, got {max_tokens!r}")
        if self._max_queue is not None and len(self._queue) >= self._max_queue:
            raise LlamaQueueFull(f"{len(self._queue)} prompts are waiting (max_queue={self._max_queue})")
        record = _Prompt(
            id=uuid.uuid4().hex,
            scope=scope,
            text=prompt,
            sampler=sampler_params or self._load.sampler_params,
            max_tokens=max_tokens or self._load.context_params.n_predict,
            images=images,
        )
        self._futures[record.id] = asyncio.get_running_loop().create_future()
        self._queue.append(record)
        self._dispatch()
        return record.id

    def _require_ready(self, what: str, *, queueing: bool = False) -> None:
        if self._status in (LlamaStatus.READY, LlamaStatus.GENERATING):
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
        """Send queued prompts down while slots are free, in FIFO order.

        A prompt whose conversation already has one running waits for it (it
        needs that reply in its history); prompts behind it may pass.
        """
        worker = self._worker
        if worker is None or self._status not in (LlamaStatus.READY, LlamaStatus.GENERATING):
            return
        slots = self._load.context_params.n_parallel - len(self._running)
        busy = {p.scope_key for p in self._running.values()}
        for record in list(self._queue):
            if slots <= 0:
                break
            if record.scope_key in busy:
                continue
            self._queue.remove(record)
            history = self._history(record.scope)
            record.history_len = len(history)
            turn: dict[str, Any] = {"role": "user", "content": record.text}
            if record.images:
                turn["images"] = record.images
            history.append(turn)
            self._running[record.id] = record
            busy.add(record.scope_key)
            slots -= 1
            worker.send(_submit(record, history))
        if self._running:
            self._status = LlamaStatus.GENERATING

    def _history(self, scope: LlamaScope | None) -> list[dict[str, Any]]:
        return self._messages if scope is None else scope.messages

    async def stop(self) -> None:
        """Abort every prompt being decoded now, also mid prompt processing.

        Their events have ``success=True, finish_reason="stopped"`` and the
        text generated so far; queued prompts stay queued. Returns once those
        events were emitted.

        Cancellation: cancelling the awaiting task does not undo the stop.

        Example::

            await parent.stop()
        """
        await self._cancel_running(list(self._running.values()), "stopped")

    async def _cancel_running(self, records: list[_Prompt], reason: FinishReason) -> None:
        if not records:
            return
        if self._worker is not None:
            self._worker.send(protocol.Cancel(tuple(r.id for r in records), reason))  # type: ignore[arg-type]
        await asyncio.shield(asyncio.gather(*(self._futures[r.id] for r in records if r.id in self._futures)))

    async def wait_for_completion(self, prompt_id: str) -> CompletionEvent:
        """The `CompletionEvent` of `prompt_id`, also if it finished before this call.

        Raises:
            KeyError: this parent never issued `prompt_id`, or it finished so long
                ago that it is no longer among the last `keep_completed` events.

        Cancellation: cancelling the wait does not cancel the prompt.

        Example::

            event = await parent.wait_for_completion(pid)
        """
        event = self._events.get(prompt_id)
        if event is not None:
            return event
        future = self._futures.get(prompt_id)
        if future is None:
            raise KeyError(
                f"unknown prompt id {prompt_id!r} (never sent, or older than the last keep_completed events)"
            )
        return await asyncio.shield(future)

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
            LlamaStatusError, LlamaWorkerDied: no ready worker.

        Cancellation: cancelling the await abandons the result; the worker
        still computes it.

        Example::

            vector = await parent.get_embeddings("a sentence", normalize=True)
        """
        self._require_ready("get_embeddings")
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not self._load.context_params.embeddings or self._load.model_params.vocab_only:
            raise LlamaFeatureNotEnabled(
                "get_embeddings() needs LlamaLoad(context_params=ContextParams(embeddings=True))"
            )
        vector = await self._request(lambda rid: protocol.Embed(rid, text, normalize))
        assert isinstance(vector, tuple)
        return list(vector)

    async def _request(self, make: Callable[[int], protocol.Command]) -> object:
        """Send one request to the worker and wait for its answer (shielded from cancellation)."""
        request_id = next(self._request_ids)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = future
        assert self._worker is not None
        self._worker.send(make(request_id))
        try:
            return await asyncio.shield(future)
        finally:
            self._requests.pop(request_id, None)

    def get_scope(self) -> LlamaScope:
        """A new conversation on this parent, with its own history and streams.

        Example::

            scope = parent.get_scope()
            await scope.send_prompt("Hello!")
        """
        if self._status is LlamaStatus.DISPOSED:
            raise LlamaStatusError("get_scope() is not allowed: the parent was disposed")
        from ._scope import LlamaScope

        scope = LlamaScope(self)
        self._scopes[scope.id] = scope
        return scope

    # ------------------------------------------------------------------ replies

    def _on_reply(self, reply: protocol.Reply) -> None:
        if isinstance(reply, protocol.Tokens):
            self._on_tokens(reply)
        elif isinstance(reply, protocol.Started):
            record = self._running.get(reply.prompt_id)
            if record is not None:
                record.started = time.monotonic()
        elif isinstance(reply, protocol.Finished):
            self._on_finished(reply)
        elif isinstance(reply, protocol.Embedding):
            self._resolve(reply.request_id, reply.vector)
        elif isinstance(reply, protocol.ScopeState):
            self._resolve(reply.request_id, reply)
        elif isinstance(reply, protocol.RequestDone):
            self._resolve(reply.request_id, None)
        elif isinstance(reply, protocol.RequestFailed):
            error = LlamaFeatureNotEnabled if reply.kind == "feature" else LlamaRequestError
            self._resolve(reply.request_id, error(reply.message))
        elif isinstance(reply, protocol.Loaded | protocol.LoadFailed):
            self._on_load_reply(reply)
        elif isinstance(reply, protocol.Progress) and self._on_progress is not None:
            try:
                self._on_progress(reply.fraction)
            except Exception:
                logger.exception("an init(on_progress=...) callback raised; loading goes on")

    def _on_load_reply(self, reply: protocol.Loaded | protocol.LoadFailed) -> None:
        handshake = self._handshake
        if handshake is None or handshake.done():
            return
        if isinstance(reply, protocol.Loaded):
            handshake.set_result(reply)
        else:
            handshake.set_exception(_LOAD_ERRORS.get(reply.kind, LlamaLoadError)(reply.message))

    def _on_tokens(self, reply: protocol.Tokens) -> None:
        record = self._running.get(reply.prompt_id)
        if record is None:
            return
        if record.first_token is None:
            record.first_token = time.monotonic()
        record.pieces.append(reply.text)
        self.stream._emit(reply.text)
        if record.scope is not None:
            record.scope.stream._emit(reply.text)

    def _on_finished(self, reply: protocol.Finished) -> None:
        record = self._running.pop(reply.prompt_id, None)
        if record is None:
            return
        tps = reply.completion_tokens / reply.generation_s if reply.generation_s > 0 else 0.0
        self._complete(
            record,
            reply.finish_reason,
            reply.error,
            prompt_tokens=reply.prompt_tokens,
            cached_tokens=reply.cached_tokens,
            dropped_turns=reply.dropped_turns,
            completion_tokens=reply.completion_tokens,
            prompt_eval_s=reply.prompt_eval_s,
            tokens_per_second=tps,
        )
        if not self._running and self._status is LlamaStatus.GENERATING:
            self._status = LlamaStatus.READY
        self._dispatch()

    def _resolve(self, request_id: int, outcome: object) -> None:
        future = self._requests.get(request_id)
        if future is None or future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def _complete(
        self,
        record: _Prompt,
        reason: FinishReason,
        error: str | None = None,
        *,
        prompt_tokens: int = 0,
        cached_tokens: int = 0,
        dropped_turns: int = 0,
        completion_tokens: int = 0,
        prompt_eval_s: float = 0.0,
        tokens_per_second: float = 0.0,
    ) -> None:
        """Record the outcome, update the conversation, emit the event once."""
        if record.id not in self._futures:
            return  # already completed
        text = "".join(record.pieces)
        self._settle_history(record, text, failed=reason == "error")
        now = time.monotonic()
        event = CompletionEvent(
            prompt_id=record.id,
            success=reason != "error",
            error=error,
            text=text,
            finish_reason=reason,
            scope_id=None if record.scope is None else record.scope.id,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            dropped_turns=dropped_turns,
            completion_tokens=completion_tokens,
            timings=CompletionTimings(
                queued_s=(record.started or now) - record.submitted,
                first_token_s=None if record.first_token is None else record.first_token - record.submitted,
                total_s=now - record.submitted,
                prompt_eval_s=prompt_eval_s,
                tokens_per_second=tokens_per_second,
            ),
        )
        self._events[record.id] = event
        while len(self._events) > self._keep_completed:
            self._events.popitem(last=False)
        future = self._futures.pop(record.id, None)
        if future is not None and not future.done():
            future.set_result(event)
        self.completions._emit(event)
        if record.scope is not None:
            record.scope.completions._emit(event)

    def _settle_history(self, record: _Prompt, text: str, *, failed: bool) -> None:
        """A reply joins the conversation; a failed prompt leaves it as it was."""
        if record.history_len is None:
            return  # never started: its user turn was never added
        history = self._history(record.scope)
        if failed:
            if len(history) == record.history_len + 1 and history[-1].get("content") == record.text:
                history.pop()
        else:
            history.append({"role": "assistant", "content": text})

    # ------------------------------------------------------------------ worker death

    def _on_exit(self, description: str) -> None:
        handshake = self._handshake
        if handshake is not None and not handshake.done():
            handshake.set_exception(LlamaWorkerDiedOnLoad(f"the worker died while loading: {description}"))
            return
        if self._status in (LlamaStatus.DISPOSED, LlamaStatus.ERROR, LlamaStatus.LOADING):
            return  # dispose(), or init() which reaps the worker itself
        logger.error("llama_isolate worker died: %s", description)
        message = f"the worker process died: {description}"
        self._status = LlamaStatus.ERROR
        self._error = message
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill()
        for record in list(self._running.values()):
            self._complete(record, "error", message)
        self._running.clear()
        if self._restart_on_crash:
            self._restarting = True  # sends are queued from now on
            self._restart_task = asyncio.get_running_loop().create_task(self._restart_after_crash())
        else:
            self._fail_unfinished("error", message, LlamaWorkerDied(message))

    async def _restart_after_crash(self) -> None:
        try:
            await self.restart()
        except LlamaError as exc:
            logger.error("llama_isolate could not restart the worker: %s", exc)
            self._fail_unfinished("error", f"the worker died and could not be restarted: {exc}", exc)
        finally:
            self._restarting = False

    def _fail_unfinished(self, reason: FinishReason, message: str, request_error: LlamaError) -> None:
        while self._queue:
            self._complete(self._queue.popleft(), reason, message if reason == "error" else None)
        for record in list(self._running.values()):
            self._complete(record, reason, message if reason == "error" else None)
        self._running.clear()
        for future in self._requests.values():
            if not future.done():
                future.set_exception(request_error)


def _submit(record: _Prompt, history: list[dict[str, Any]]) -> protocol.Submit:
    """The command that starts `record`, with its whole conversation (and its images, if any)."""
    turns = tuple((str(m["role"]), str(m["content"])) for m in history)
    images: tuple[tuple[tuple[str, bytes], ...], ...] = ()
    if any(m.get("images") for m in history):
        images = tuple(tuple((i.name, i.data) for i in m.get("images") or ()) for m in history)
    return protocol.Submit(record.id, record.scope_key, turns, record.sampler, record.max_tokens, images)
