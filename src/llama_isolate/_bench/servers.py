"""The servers the HTTP benchmarks run: each a subprocess on a free loopback port, stopped with all its children.

`serving(server)` starts one, yields it with a factory of httpx clients for it
(a connection per request, as independent clients have), and stops it
however the block ends. `CpuWatch` measures what the rest of the machine
used meanwhile, so a table taken beside a busy neighbour says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from .common import model_path

if TYPE_CHECKING:
    import httpx

READY_TIMEOUT = 120.0
REQUEST_TIMEOUT = 120.0  # httpx's, between two reads
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    slots: int
    argv: tuple[str, ...]  # with {model} and {port} to fill in

    def command(self, model: str, port: int) -> list[str]:
        return [part.format(model=model, port=port) for part in self.argv]


class ServerProcess:
    """A server subprocess in a session of its own, so that stopping it can reach its children too."""

    def __init__(self, server: Server, model: str) -> None:
        self.server = server
        self.port = free_port()
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.process = subprocess.Popen(
            server.command(model, self.port),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.stopped = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 2000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:]

    async def wait_ready(self, client: httpx.AsyncClient) -> float:
        """Poll GET /v1/models until 200; seconds it took."""
        import httpx

        started = time.perf_counter()
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"{self.server.label} exited with {code} before answering:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/v1/models", timeout=2.0)).status_code == 200:
                    return time.perf_counter() - started
            if time.perf_counter() - started > READY_TIMEOUT:
                raise TimeoutError(
                    f"{self.server.label} did not answer GET /v1/models in {READY_TIMEOUT:.0f} s:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.1)

    def stop(self) -> str:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; then kill whatever is left in its process group.

        Blocking on purpose: it runs in `finally`, also while a Ctrl-C unwinds.
        """
        started = time.perf_counter()
        group = self.process.pid
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
            outcome = f"exited in {time.perf_counter() - started:.1f} s"
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            outcome = f"still running {STOP_TIMEOUT:.0f} s after SIGTERM: killed"
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            pass
        else:  # a child outlived the server (or is still on its way out): wait a little, then kill it
            for _ in range(50):
                time.sleep(0.1)
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    outcome += "; a child exited after it"
                    break
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                outcome += "; a child was left running 5 s after it: killed"
        self.log.close()
        self.stopped = outcome
        return outcome


class CpuWatch:
    """CPUs used by every process but the server's (and its children) and this one: the noise."""

    def __init__(self, server_pid: int) -> None:
        import psutil

        self._root = psutil.Process(server_pid)
        self._me = psutil.Process()
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        """(wall, the machine's busy CPU seconds, ours: the server tree's and this process's)."""
        import psutil

        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + getattr(machine, "irq", 0.0)
        busy += getattr(machine, "softirq", 0.0)
        ours = 0.0
        for process in [self._me, self._root, *self._root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                ours += times.user + times.system
        return time.perf_counter(), busy, ours

    def others(self) -> float:
        """Average CPUs the other processes used since the watch started."""
        now = self._sample()
        wall = now[0] - self._start[0]
        return max(0.0, (now[1] - self._start[1]) - (now[2] - self._start[2])) / wall if wall > 0 else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serving(server: Server) -> AsyncIterator[tuple[ServerProcess, Callable[[], httpx.AsyncClient]]]:
    import httpx

    process = ServerProcess(server, model_path())

    def make_client() -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=process.base_url,
            timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=5.0),
            # A connection per request, as independent clients have: native llama-server sometimes closes a
            # kept-alive connection after a stream without saying so, and the next request on it fails unread.
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=0),
            trust_env=False,  # no proxy for loopback, whatever the environment says
        )

    try:
        yield process, make_client
    finally:
        process.stop()
