"""The worker process: a command loop around the engine.

Threads, so that the engine never waits on the pipe or on an image:

- the main thread runs the loop below and every llama.cpp decode;
- a reader thread receives commands (and answers pings); a `Cancel` also
  raises the abort flag at once, so `llama_decode` returns mid-batch;
- a writer thread sends what the socket could not take at once (`channel`);
- a preparation thread decodes the images of prompts (`prepare`);
- a watch thread chooses the decode's thread count (`threads`).

The loop, one turn at a time:

1. clear the abort flag (it is raised again by any stop that arrives later);
2. take every command that arrived (wait for one when there is no work);
3. apply them in arrival order: submit, cancel, embed, save/load/drop a
   conversation's cache, shut down;
4. run one engine step: admit prompts into free slots, decode one batch,
   sample, and send the step's tokens and completions in one write.

A failure while handling one command is that command's failure (its prompt
ends with the error, its request gets `RequestFailed`), and the loop goes on.
A failure inside a step that no single prompt can be blamed for ends the
running prompts with the error, and the loop goes on. Only a broken channel
ends the worker. The worker never reports a prompt as finished when it is
dying: the parent fails those itself when it sees the worker gone.

Pings are answered by the reader thread, so a worker that is busy in a long
decode still proves that it is alive; one that is stopped or frozen does not.
Each answer carries the engine's progress (steps taken, prompts prepared), so
the parent also notices an engine that answers but no longer moves.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from collections.abc import Callable

from .. import _protocol as protocol
from .channel import Channel
from .engine import Engine, RequestFailure
from .llama import LoadFailure

logger = logging.getLogger("llama_isolate.worker")

_WORKER_NICENESS = 5


class _Wake:
    """Put in the inbox when an image prompt's preparation finished: there is work again."""


_WAKE = _Wake()
Inbox = queue.SimpleQueue[protocol.Command | _Wake]


def _read_loop(channel: Channel, inbox: Inbox, engine: Engine) -> None:
    try:
        while True:
            command = channel.receive()
            if command is None:
                break
            if isinstance(command, protocol.Ping):
                channel.send_from_reader(protocol.Pong(command.request_id, engine.progress))
                continue
            inbox.put(command)
            # Put first, flag second: whoever sees the flag finds the Cancel
            # queued. Every Cancel raises the flag, even for a prompt not yet
            # admitted (it may be admitted before the Cancel is read): a
            # needless abort only costs redoing part of one batch.
            if isinstance(command, protocol.Cancel):
                engine.abort_flag.set()
            elif isinstance(command, protocol.Shutdown):
                engine.abort_flag.set()
                return
    except (OSError, ValueError) as exc:  # ValueError: a corrupt frame from the parent
        if not isinstance(exc, OSError):
            logger.error("the channel from the parent is corrupt: %s", exc)
    inbox.put(protocol.Shutdown())
    engine.abort_flag.set()


def _serve(channel: Channel, engine: Engine, inbox: Inbox) -> None:
    threading.Thread(target=_read_loop, args=(channel, inbox, engine), name="reader", daemon=True).start()
    while True:
        engine.abort_flag.clear()  # 1
        if not engine.busy:
            engine.rest()
        commands = [inbox.get()] if not engine.busy else []  # 2
        while True:
            try:
                commands.append(inbox.get_nowait())
            except queue.Empty:
                break
        for command in commands:  # 3
            if not _apply(command, engine, channel):
                return
        try:  # 4
            engine.step()
        except Exception as exc:
            logger.exception("an engine step failed")
            engine.fail_running(f"the worker failed while decoding ({type(exc).__name__}: {exc})")
        channel.flush()


def _apply(command: protocol.Command | _Wake, engine: Engine, channel: Channel) -> bool:
    """Carry out one command; False means shut down. A failure is the command's own."""
    try:
        match command:
            case protocol.Submit():
                engine.submit(command)
            case protocol.Cancel(prompt_ids=ids, reason=reason):
                engine.cancel(ids, reason)
            case protocol.DropScope(scope_id=key):
                engine.drop_scope(key)
            case protocol.Embed(request_id=rid, text=text, normalize=normalize):
                _answer(channel, rid, lambda: protocol.Embedding(rid, *engine.embed(text, normalize)))
            case protocol.Probe(request_id=rid, turns=turns):
                _answer(channel, rid, lambda: protocol.Probed(rid, *engine.probe(turns)))
            case protocol.SaveScope(request_id=rid, scope_id=key):
                _answer(channel, rid, lambda: _with_id(engine.save_scope(key), rid))
            case protocol.LoadScope(request_id=rid, scope_id=key, tokens=tokens, data=data):
                _answer(channel, rid, lambda: _loaded(rid, engine, key, tokens, data))
            case protocol.Shutdown():
                return False
    except Exception as exc:
        logger.exception("handling %s failed", type(command).__name__)
        _fail(channel, command, f"the worker could not handle it ({type(exc).__name__}: {exc})")
    return True


def _fail(channel: Channel, command: protocol.Command | _Wake, error: str) -> None:
    if isinstance(command, protocol.Submit):
        channel.send(protocol.Finished.failed(command.prompt_id, error))
    elif isinstance(command, protocol.Embed | protocol.SaveScope | protocol.LoadScope | protocol.Probe):
        channel.send(protocol.RequestFailed(command.request_id, "internal", error))


def _answer(channel: Channel, request_id: int, work: Callable[[], protocol.Reply]) -> None:
    try:
        channel.send(work())
    except RequestFailure as exc:
        channel.send(protocol.RequestFailed(request_id, exc.kind, exc.message))


def _with_id(state: protocol.ScopeState, request_id: int) -> protocol.Reply:
    return protocol.ScopeState(request_id, state.tokens, state.data)


def _loaded(request_id: int, engine: Engine, key: str, tokens: tuple[int, ...], data: bytes) -> protocol.Reply:
    engine.load_scope(key, tokens, data)
    return protocol.RequestDone(request_id)


class _ProgressReporter:
    """Sends load progress up, at most once per percent (llama.cpp reports far more often)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._sent = -1.0

    def __call__(self, fraction: float) -> None:
        if fraction >= 1.0 or fraction - self._sent >= 0.01:
            self._sent = fraction
            self._channel.send_now(protocol.Progress(min(1.0, max(0.0, fraction))))


def main(fd: int) -> None:
    """Entry point of the worker process; `fd` is its end of the channel."""
    # Ctrl-C in a terminal reaches the whole process group; the parent
    # decides what it means (stop an answer), not the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The worker's threads take every core; a lower priority lets the
    # caller's event loop or UI thread win the CPU the moment it wakes
    # (p99 timer lateness 2.8 ms -> 1.1 ms on 2 cores). Alone, it runs as fast.
    os.nice(_WORKER_NICENESS)
    os.dup2(2, 1)  # C code that prints to stdout must never reach the caller's stdout
    channel = Channel(fd)
    channel.send_now(protocol.Hello(os.getpid()))
    command = channel.receive()
    if not isinstance(command, protocol.Load):
        return
    inbox: Inbox = queue.SimpleQueue()
    try:
        engine = Engine(command.load, channel.send, _ProgressReporter(channel), wake=lambda: inbox.put(_WAKE))
    except LoadFailure as exc:
        channel.send_now(protocol.LoadFailed(exc.kind, exc.message))
        return
    except Exception as exc:  # an unexpected bug: report it rather than die silently
        channel.send_now(protocol.LoadFailed("internal", f"{type(exc).__name__}: {exc}"))
        raise
    channel.send_now(protocol.Loaded(engine.info()))
    writer = channel.start_writer()
    try:
        _serve(channel, engine, inbox)
    finally:
        engine.close()
        channel.finish(writer)
    # Not sys.exit: interpreter shutdown would wait for an image still being
    # decoded on the preparation thread, for seconds.
    os._exit(0)
