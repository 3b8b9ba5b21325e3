"""The parent's side of the process boundary: spawn, framed channel, liveness of the process.

The worker is started as a fresh interpreter running `llama_isolate._worker`,
never through multiprocessing's spawn, so the caller's `__main__` is not
imported again in the child (a script without a main guard, `python -` and a
notebook all work). The channel is one end of a Unix socket pair passed to the
child as a file descriptor: llama.cpp's C stdio never touches it. The child's
stdout goes to our stderr, and its stderr is drained by a thread that keeps
the last lines for error messages (and forwards them when verbose).

Frames are cut out of the socket's data by an `asyncio.Protocol`, so a step's
replies cost one callback, not a coroutine resumption per frame.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

from .. import _protocol as protocol

logger = logging.getLogger("llama_isolate")

# The child's first lines: import our package from where the parent found it,
# and not from the current directory (which `-c` would put first on sys.path).
_BOOTSTRAP = (
    "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "sys.path.insert(0, {root!r}); "
    "from llama_isolate._worker.main import main; main({fd})"
)
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_STDERR_LINES_KEPT = 40
_EXIT_AFTER_EOF_S = 1.0
# Lines of a dying worker's stderr that say why (an assertion, a C++ exception,
# a Python traceback's last line), as opposed to the noise around them.
_SALIENT = re.compile(r"GGML_ASSERT|error|terminate called|what\(\)|exception|abort|fault", re.IGNORECASE)
# What a debugger attached by ggml's backtrace prints (without GGML_NO_BACKTRACE).
_NOISE = re.compile(r"^#\d+ +0x|^\[Inferior|No such file or directory|^\[New LWP|^\[Thread debugging")


class _FrameReader(asyncio.Protocol):
    """Cuts length-prefixed frames out of the byte stream and hands each decoded reply on."""

    def __init__(self, on_reply: Callable[[protocol.Reply], None], on_broken: Callable[[str], None]) -> None:
        self._on_reply = on_reply
        self._on_broken = on_broken
        self._buffer = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport. Not necessarily an asyncio.Transport subclass: uvloop's (which uvicorn picks
        # when it is installed) are not.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset, size = 0, len(buffer)
        try:
            while size - offset >= protocol.HEADER.size:
                start = offset + protocol.HEADER.size
                end = start + protocol.frame_length(buffer[offset:start])
                if end > size:
                    break
                reply = protocol.decode(buffer[start:end])
                offset = end
                self._on_reply(reply)  # type: ignore[arg-type]
        except Exception as exc:  # a corrupt frame: nothing after it can be trusted
            self._on_broken(f"the channel from the worker is corrupt ({type(exc).__name__}: {exc})")
        finally:
            del buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class WorkerProcess:
    """One worker process and the framed channel to it.

    `on_reply` receives every decoded reply on the event loop (it must not
    raise); `on_exit` is called once, on the event loop, when the channel
    closes or the process ends, whichever is noticed first.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        on_exit: Callable[[str], None],
        stderr_tail: collections.deque[str],
    ) -> None:
        self._process = process
        self._on_exit: Callable[[str], None] | None = on_exit
        self._stderr_tail = stderr_tail
        self._killed_because: str | None = None
        self._loop = asyncio.get_running_loop()
        self._exited = asyncio.Event()
        self._reader: _FrameReader | None = None
        self._watch_task: asyncio.Task[None] | None = None
        threading.Thread(target=self._watch_exit, name="llama-isolate-watch", daemon=True).start()

    @classmethod
    async def spawn(
        cls,
        *,
        verbose: bool,
        on_reply: Callable[[protocol.Reply], None],
        on_exit: Callable[[str], None],
    ) -> WorkerProcess:
        """Start a worker process; it answers `Hello` once it runs."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = _start_process(theirs.fileno(), verbose)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        tail: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES_KEPT)
        assert process.stderr is not None
        threading.Thread(
            target=_drain_stderr,
            args=(process.stderr, tail, verbose),
            name="llama-isolate-stderr",
            daemon=True,
        ).start()
        worker = cls(process, on_exit=on_exit, stderr_tail=tail)
        loop = asyncio.get_running_loop()
        _, reader = await loop.create_unix_connection(lambda: _FrameReader(on_reply, worker._broken), sock=ours)
        worker._reader = reader
        worker._watch_task = loop.create_task(worker._watch_channel(reader))
        return worker

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self._process.pid

    @property
    def alive(self) -> bool:
        """True while the process has not exited."""
        return self._process.poll() is None

    def send(self, message: protocol.Command) -> None:
        """Queue one command for the worker; never blocks (the transport buffers)."""
        transport = self._reader.transport if self._reader is not None else None
        if transport is None or transport.is_closing():
            return
        transport.write(protocol.encode(message))

    def describe_exit(self) -> str:
        """How the process ended, with the telling lines of its stderr, for error messages."""
        code = self._process.poll()
        if self._killed_because is not None:
            what = f"the worker was killed because {self._killed_because}"
        elif code is None:
            what = "the worker closed its channel"
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            what = f"the worker process was killed by {name}{hint}"
        else:
            what = f"the worker process exited with code {code}"
        last = telling_lines(self._stderr_tail)
        return what + ("; its last output: " + " | ".join(last) if last else "")

    async def close(self, *, grace: float = 2.0) -> None:
        """Ask the worker to exit, then kill it if it has not exited within `grace` seconds."""
        self._on_exit = None
        with contextlib.suppress(Exception):
            self.send(protocol.Shutdown())  # buffered; the transport sends it while we wait
        await self._reap(grace)
        if self._reader is not None and self._reader.transport is not None:
            self._reader.transport.close()
        if self._watch_task is not None:
            self._watch_task.cancel()
            # wait() never raises the task's own CancelledError, only ours.
            await asyncio.wait([self._watch_task])

    def kill(self, because: str | None = None) -> None:
        """Kill the process at once (it is reaped by the watcher thread); `because` goes into `describe_exit`."""
        if because is not None and self._killed_because is None and self.alive:
            self._killed_because = because
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()

    def _broken(self, why: str) -> None:
        logger.error("llama_isolate: %s", why)
        self.kill(why)
        if self._reader is not None and self._reader.transport is not None:
            self._reader.transport.abort()

    async def _reap(self, grace: float) -> None:
        # asyncio.wait, not wait_for: on Python < 3.12 wait_for can swallow the
        # caller's cancellation when the awaited thing finishes at that moment.
        loop = asyncio.get_running_loop()
        exited = loop.run_in_executor(None, self._process.wait)
        _, pending = await asyncio.wait({exited}, timeout=grace)
        if pending:
            logger.warning("worker %d did not exit within %.1f s; killing it", self.pid, grace)
            self.kill(f"it did not exit within {grace:.1f} s of being asked to")
            await exited

    async def _watch_channel(self, reader: _FrameReader) -> None:
        await reader.closed
        # The channel closes a moment before the process is reaped; wait for
        # the exit so the error can say how the worker ended. A worker that
        # closed its channel but lives on is useless: kill it.
        exited = asyncio.ensure_future(self._exited.wait())
        _, pending = await asyncio.wait({exited}, timeout=_EXIT_AFTER_EOF_S)
        if pending:
            exited.cancel()
            self.kill("it closed its channel but did not exit")
        self._notify_exit()

    def _watch_exit(self) -> None:
        self._process.wait()
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._on_process_exit)

    def _on_process_exit(self) -> None:
        # Normally the channel ends at the same moment and reports the exit
        # after the last replies; this is the fallback for a channel that
        # stays open (an fd leaked to a grandchild).
        self._exited.set()
        self._loop.call_later(_EXIT_AFTER_EOF_S, self._notify_exit)

    def _notify_exit(self) -> None:
        on_exit, self._on_exit = self._on_exit, None
        if on_exit is not None:
            on_exit(self.describe_exit())


def telling_lines(lines: collections.abc.Iterable[str], keep: int = 3) -> list[str]:
    """The last `keep` lines of a dying worker's stderr that say why it died (else its last lines)."""
    kept = [line.strip() for line in lines if line.strip()]
    salient = [line for line in kept if _SALIENT.search(line) and not _NOISE.search(line)]
    return (salient or kept)[-keep:]


def _start_process(fd: int, verbose: bool) -> subprocess.Popen[bytes]:
    """Fork and exec the worker; returns at once, without waiting for it to start."""
    env = dict(os.environ)
    if not verbose:
        # A failed GGML_ASSERT would otherwise attach gdb and print pages of
        # backtrace; the assertion's own line is what the error message needs.
        env["GGML_NO_BACKTRACE"] = "1"
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-c", _BOOTSTRAP.format(root=_PACKAGE_ROOT, fd=fd)],
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        close_fds=True,
        env=env,
    )


def _has_fileno(stream: object) -> bool:
    try:
        stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _drain_stderr(pipe: object, tail: collections.deque[str], verbose: bool) -> None:
    for raw in iter(pipe.readline, b""):  # type: ignore[attr-defined]
        line = raw.decode("utf-8", "replace").rstrip("\n")
        tail.append(line)
        if verbose:
            sys.stderr.write(line + "\n")
        else:
            logger.debug("worker: %s", line)
    pipe.close()  # type: ignore[attr-defined]
