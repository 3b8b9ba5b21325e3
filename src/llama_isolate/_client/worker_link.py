"""WorkerLink: the parent's end of one worker process.

It starts the worker and waits for the model under a deadline, routes every
reply by its type, answers typed requests (embeddings, states, pings), and
watches that the worker stays alive: a worker that dies, or that stops
answering pings while it has work (a SIGSTOP, a frozen machine), is reported
once through `on_exit`, after which nothing of it is routed any more.

The routing never lets an exception escape into the transport: a handler
that fails for one prompt fails that prompt (`on_fault`), and the worker goes
on serving the others.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .. import _protocol as protocol
from .._errors import (
    LlamaError,
    LlamaLoadTimeout,
    LlamaRequestError,
    LlamaWorkerDied,
    LlamaWorkerDiedOnLoad,
    load_error,
    request_error,
)
from .._events import ModelInfo
from .._params import LlamaLoad
from .process import WorkerProcess

# An engine that answers pings but makes no progress for this many liveness timeouts (60 s by default) is stuck.
STALL_FACTOR = 6

logger = logging.getLogger("llama_isolate")

A = TypeVar("A", bound=protocol.Answer)


class WorkerLink:
    """One worker process: start, requests, reply routing, death and liveness.

    Args:
        load: what the worker loads.
        on_started, on_tokens, on_finished: a prompt's replies, on the event loop.
        on_fault: `(prompt_id, error)` when handling one of that prompt's replies raised.
        on_exit: `(description)` once, when the worker died or was declared dead after `init`.
        has_work: whether the worker owes the parent anything (then it must answer pings).
        liveness_timeout: seconds a busy worker may leave a ping unanswered (None: never checked).
        process_factory: starts the process, with `WorkerProcess.spawn`'s keyword arguments (tests pass a fake).
    """

    def __init__(
        self,
        load: LlamaLoad,
        *,
        on_started: Callable[[str], None],
        on_tokens: Callable[[protocol.Tokens], None],
        on_finished: Callable[[protocol.Finished], None],
        on_fault: Callable[[str, str], None],
        on_exit: Callable[[str], None],
        has_work: Callable[[], bool],
        liveness_timeout: float | None,
        process_factory: Callable[..., Awaitable[WorkerProcess]] = WorkerProcess.spawn,
    ) -> None:
        self._load = load
        self._process_factory = process_factory
        self._on_exit = on_exit
        self._on_fault = on_fault
        self._has_work = has_work
        self._liveness_timeout = liveness_timeout
        self._worker: WorkerProcess | None = None
        self._handshake: asyncio.Future[ModelInfo] | None = None
        self._on_progress: Callable[[float], object] | None = None
        self._requests: dict[int, asyncio.Future[protocol.Answer]] = {}
        self._request_ids = itertools.count(1)
        self._ping_sent: float | None = None
        self._engine_progress = 0  # the engine's progress in the last pong, and since when it has not changed
        self._progress_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Every request's answer goes to its waiting future (a request whose answer had no route would hang).
        self._routes: dict[type, Callable[[Any], None]] = dict.fromkeys(protocol.REPLY_OF.values(), self._answer)
        self._routes |= {
            protocol.Tokens: on_tokens,
            protocol.Started: lambda reply: on_started(reply.prompt_id),
            protocol.Finished: on_finished,
            protocol.RequestFailed: self._answer,
            protocol.Pong: self._pong,
            protocol.Loaded: self._loaded,
            protocol.LoadFailed: self._load_failed,
            protocol.Progress: self._progress,
            protocol.Hello: lambda reply: None,
        }

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs."""
        worker = self._worker
        return worker.pid if worker is not None and worker.alive else None

    # ------------------------------------------------------------------ start and end

    async def start(self, timeout: float, on_progress: Callable[[float], object] | None = None) -> ModelInfo:
        """Spawn the worker and load the model within `timeout` seconds; raises a `LlamaLoadError`.

        On any failure (and on cancellation) the worker is killed and reaped.
        """
        self._handshake = asyncio.get_running_loop().create_future()
        self._on_progress = on_progress
        try:
            self._worker = await self._process_factory(
                verbose=self._load.verbose, on_reply=self._route, on_exit=self._exited
            )
            self._worker.send(protocol.Load(self._load))
            # asyncio.wait, not wait_for, which can swallow a cancellation on Python < 3.12.
            done, _ = await asyncio.wait({self._handshake}, timeout=timeout)
            if not done:
                raise LlamaLoadTimeout(
                    f"the model did not load within {timeout:.0f} s; pass init(timeout=...) to allow more"
                )
            info = self._handshake.result()
        except BaseException:
            await self.abandon()
            raise
        finally:
            self._handshake = None
            self._on_progress = None
        self._schedule_liveness()
        return info

    def cancel_start(self, error: LlamaError) -> None:
        """Make a `start()` in progress raise `error` (for `dispose()` during `init()`)."""
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(error)

    async def abandon(self) -> None:
        """Kill the worker at once and reap it."""
        worker, self._worker = self._worker, None
        self._stop_liveness()
        if worker is not None:
            worker.kill()
            try:
                await worker.close(grace=2.0)
            except Exception:
                logger.exception("reaping a killed worker failed")

    async def close(self, *, grace: float) -> None:
        """Ask the worker to exit; kill it after `grace` seconds. Pending requests fail."""
        worker, self._worker = self._worker, None
        self._stop_liveness()
        if worker is None:
            return
        try:
            await worker.close(grace=grace)
        except BaseException:
            worker.kill()
            raise
        finally:
            self.fail_requests(LlamaWorkerDied("the worker was shut down"))

    def kill(self, because: str | None = None) -> None:
        """Kill the worker process (its death is then reported through `on_exit` as usual)."""
        if self._worker is not None:
            self._worker.kill(because)

    # ------------------------------------------------------------------ commands and requests

    def send(self, command: protocol.Command) -> None:
        """Send one command; dropped silently when there is no worker (its death is being reported)."""
        if self._worker is not None:
            self._worker.send(command)

    async def request(self, make: Callable[[int], protocol.Request], expect: type[A]) -> A:
        """Send a request and wait for its answer (shielded from cancellation).

        Raises:
            LlamaRequestError (or `LlamaStateError`), LlamaFeatureNotEnabled: the worker refused it.
            LlamaWorkerDied: there is no worker, or it died first.
        """
        if self._worker is None:
            raise LlamaWorkerDied("there is no worker to answer")
        request_id = next(self._request_ids)
        command = make(request_id)
        assert protocol.REPLY_OF[type(command)] is expect
        future: asyncio.Future[protocol.Answer] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = future
        self._worker.send(command)
        try:
            answer = await asyncio.shield(future)
        finally:
            self._requests.pop(request_id, None)
        if not isinstance(answer, expect):
            raise LlamaRequestError(f"the worker answered {type(answer).__name__} to {type(command).__name__}")
        return answer

    def fail_requests(self, error: LlamaError) -> None:
        """Fail every request still waiting for its answer."""
        for future in self._requests.values():
            if not future.done():
                future.set_exception(error)
        self._requests.clear()

    # ------------------------------------------------------------------ replies

    def _route(self, reply: protocol.Reply) -> None:
        handler = self._routes.get(type(reply))
        if handler is None:
            logger.error("llama_isolate: ignored an unexpected reply %s", type(reply).__name__)
            return
        try:
            handler(reply)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # never into the transport: that would end the channel
            logger.exception("llama_isolate: handling a %s reply failed", type(reply).__name__)
            prompt_id = getattr(reply, "prompt_id", None)
            if isinstance(prompt_id, str):
                self._on_fault(
                    prompt_id, f"the parent failed to handle the worker's reply ({type(exc).__name__}: {exc})"
                )

    def _answer(self, reply: protocol.Answer | protocol.RequestFailed) -> None:
        future = self._requests.get(reply.request_id)
        if future is None or future.done():
            return
        if isinstance(reply, protocol.RequestFailed):
            future.set_exception(request_error(reply.kind, reply.message))
        else:
            future.set_result(reply)

    def _loaded(self, reply: protocol.Loaded) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_result(reply.info)

    def _load_failed(self, reply: protocol.LoadFailed) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(load_error(reply.kind, reply.message))

    def _progress(self, reply: protocol.Progress) -> None:
        if self._on_progress is None:
            return
        try:
            self._on_progress(reply.fraction)
        except Exception:
            logger.exception("an init(on_progress=...) callback raised; loading goes on")

    def _exited(self, description: str) -> None:
        self._stop_liveness()
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(LlamaWorkerDiedOnLoad(f"the worker died while loading: {description}"))
            return
        if self._worker is None:
            return  # closed or abandoned on purpose
        self._worker = None
        message = f"the worker process died: {description}"
        self.fail_requests(LlamaWorkerDied(message))
        self._on_exit(description)

    # ------------------------------------------------------------------ liveness

    def _schedule_liveness(self) -> None:
        if self._liveness_timeout is not None and self._worker is not None:
            interval = min(1.0, self._liveness_timeout / 4)
            self._timer = asyncio.get_running_loop().call_later(interval, self._check_liveness, interval)

    def _stop_liveness(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ping_sent = None
        self._progress_since = None

    def _check_liveness(self, interval: float) -> None:
        assert self._liveness_timeout is not None
        self._timer = asyncio.get_running_loop().call_later(interval, self._check_liveness, interval)
        now = time.monotonic()
        if self._ping_sent is None:
            if self._has_work() or self._requests:
                self._ping_sent = now
                self.send(protocol.Ping(next(self._request_ids)))
            else:
                self._progress_since = None  # idle: progress is measured again from the next work on
        elif now - self._ping_sent > self._liveness_timeout:
            self._stop_liveness()
            self.kill(
                f"it did not answer a liveness ping within {self._liveness_timeout:g} s while it had work "
                "(stopped with SIGSTOP, or frozen)"
            )

    def _pong(self, reply: protocol.Pong) -> None:
        self._ping_sent = None
        now = time.monotonic()
        if reply.progress != self._engine_progress or self._progress_since is None:
            self._engine_progress, self._progress_since = reply.progress, now
            return
        stalled = now - self._progress_since
        if self._liveness_timeout is not None and stalled > STALL_FACTOR * self._liveness_timeout:
            self._stop_liveness()
            self.kill(
                f"its engine made no progress for {stalled:.0f} s while it had work (a decode or a prompt's "
                f"preparation that does not end; the limit is {STALL_FACTOR} x LlamaParent(liveness_timeout))"
            )
