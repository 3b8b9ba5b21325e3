"""Our OpenAI-compatible server beside llama-cpp-python's and native llama.cpp's `llama-server`.

Each server runs as a subprocess on a free loopback port, one at a time, with
the default model and 2 threads; the clients stream `/v1/chat/completions` over
httpx, temperature 0, 96 tokens, a connection per request. For each server:

- a warm-up request;
- 1 client sending the 8 prompts one after another, then 8 clients sending them
  at once (best of two rounds): aggregate tok/s (completion tokens over the wall
  time from the first request to the last stream's end), time to first token;
- broken streams: an HTTP or transport error, or a stream that ends without a
  chunk with a `finish_reason` and `[DONE]`;
- "disconnect -> slot free": the server busy on as many long streams as it has
  slots (8 for ours and llama-server, 1 for llama-cpp-python), one client closes
  its connection and a new request is sent at the same moment; it can only
  start once the server frees the closed stream's slot. The figure is the time
  from the close to the new request's first token;
- how much CPU the other processes of the machine used meanwhile: on 2 cores a
  busy neighbour slows a server that decodes on 2 fixed threads 10-100x (ggml's
  threads wait for each other after every operation), so a table measured
  beside one says it is not comparable. Every phase has a time budget, after
  which its streams are cut and counted broken, so the section still ends.

llama-cpp-python's server runs twice: with `--interrupt_requests False`, the
config the targets compare against, and with its default, where a waiting
request cuts the running stream short (its client sees the connection end
mid-stream: counted as broken). Native `llama-server` is measured only when
LLAMA_SERVER_BIN names its binary; then ours and it also run at once, taking
turns at 8-client rounds, for the ratio between them (see PAIRED_ROUNDS).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from .common import N_THREADS, Report, model_path, ms, verdict

if TYPE_CHECKING:
    import httpx

PROMPTS = [
    "Write a short story about a fox who finds a lantern.",
    "Explain step by step how rain forms.",
    "Describe a busy market on a summer morning.",
    "Tell me about the history of bread.",
    "Write a poem about the mountains in winter.",
    "Explain why the sea is salty.",
    "Describe your ideal garden in detail.",
    "Tell me a story about a lighthouse keeper.",
]
MAX_TOKENS = 96
ROUNDS = 2  # of the 8-client run; the best one is reported
# Against native llama-server the speed of this kind of VM drifts by 20% within minutes, more than the
# gap measured; so both servers are up at once and take turns, 8 clients a round, and each round of ours
# is set beside the native rounds just before and after it.
PAIRED_ROUNDS = 4
SLOTS = 8  # ours and llama-server: --parallel 8
LONG_TOKENS = 512  # the streams that hold the slots while one is closed
HELD_TOKENS = 4  # each holder has streamed this many tokens before the close
READY_TIMEOUT = 120.0
REQUEST_TIMEOUT = 120.0  # httpx's, between two reads
# Bounds on each measurement, so that the section ends in minutes even on a busy machine (native
# llama-server's 2 threads on 2 cores slow down 10-100x beside another busy process): a phase's
# streams still running after PHASE_BUDGET are cut (and counted broken), prompts not yet sent are not.
PHASE_BUDGET = 30.0
START_TIMEOUT = 30.0  # for the long streams that fill every slot to all stream
FREE_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    slots: int
    argv: tuple[str, ...]  # with {model} and {port} to fill in

    def command(self, model: str, port: int) -> list[str]:
        return [part.format(model=model, port=port) for part in self.argv]


def servers() -> list[Server]:
    """The servers to measure, ours first; native llama-server only when LLAMA_SERVER_BIN is set."""
    threads = str(N_THREADS)
    ours = ("-m", "llama_isolate", "serve", "--model", "{model}", "--port", "{port}")
    where = ("--host", "127.0.0.1", "--port", "{port}")
    peer = ("-m", "llama_cpp.server", "--model", "{model}", *where)
    peer_threads = ("--n_threads", threads, "--n_threads_batch", threads, "--n_ctx", "2048")
    found = [
        Server(
            "ours",
            "llama_isolate",
            SLOTS,
            (sys.executable, *ours, "--parallel", str(SLOTS), "--threads", threads, "--ctx", "1024"),
        ),
        Server(
            "peer",
            "llama-cpp-python --interrupt_requests False",
            1,
            (sys.executable, *peer, *peer_threads, "--interrupt_requests", "False"),
        ),
        Server("peer_default", "llama-cpp-python, default config", 1, (sys.executable, *peer, *peer_threads)),
    ]
    native = os.environ.get("LLAMA_SERVER_BIN")
    if native:
        # -c is the context of all slots together: 1024 each, as ours.
        native_options = ("--parallel", str(SLOTS), "-t", threads, "-tb", threads, "-c", str(SLOTS * 1024))
        found.append(Server("native", "llama-server", SLOTS, (native, "-m", "{model}", *where, *native_options)))
    return found


@dataclass
class Stream:
    """One streamed chat completion as the client saw it; times are perf_counter() seconds."""

    sent: float = 0.0
    first: float | None = None  # the first chunk with content
    end: float | None = None
    chunks: int = 0  # chunks with content
    usage: int | None = None  # completion_tokens, when the server sends a usage chunk
    finished: bool = False  # a chunk with a finish_reason came
    done: bool = False  # `data: [DONE]` came
    error: str | None = None

    @property
    def tokens(self) -> int:
        return self.usage if self.usage is not None else self.chunks

    @property
    def broken(self) -> bool:
        return self.error is not None or not (self.finished and self.done)

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.sent

    def why(self) -> str:
        if self.error is not None:
            return self.error
        missing = [name for name, seen in (("finish_reason", self.finished), ("[DONE]", self.done)) if not seen]
        return f"ended after {self.chunks} chunks without {' and '.join(missing)}"


def _take(stream: Stream, data: str) -> None:
    """Account for one SSE `data:` payload."""
    if data == "[DONE]":
        stream.done = True
        return
    chunk = json.loads(data)
    if "error" in chunk:
        stream.error = f"error chunk: {str(chunk['error'])[:200]}"
    usage = chunk.get("usage")
    if usage and usage.get("completion_tokens") is not None:
        stream.usage = int(usage["completion_tokens"])
    for choice in chunk.get("choices") or []:
        if (choice.get("delta") or {}).get("content"):
            stream.chunks += 1
            if stream.first is None:
                stream.first = time.perf_counter()
        if choice.get("finish_reason"):
            stream.finished = True


async def chat(
    client: httpx.AsyncClient,
    prompt: str,
    max_tokens: int,
    stream: Stream | None = None,
    *,
    deadline: float | None = None,
) -> Stream:
    """Stream one chat completion into `stream` (which the caller may watch as it fills).

    A stream still running at `deadline` (a perf_counter() time) is cut: its connection is closed.
    """
    stream = stream if stream is not None else Stream()
    reading = _read(client, prompt, max_tokens, stream)
    try:
        if deadline is None:
            await reading
        else:
            await asyncio.wait_for(reading, max(0.0, deadline - time.perf_counter()))
    except asyncio.TimeoutError:
        stream.error = f"cut: no end within the {PHASE_BUDGET:.0f} s budget"
    finally:
        stream.end = time.perf_counter()
    return stream


async def _read(client: httpx.AsyncClient, prompt: str, max_tokens: int, stream: Stream) -> None:
    import httpx

    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    stream.sent = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                stream.error = f"HTTP {response.status_code}: {text[:200]}"
                return
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    _take(stream, line[5:].strip())
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"


@dataclass
class Phase:
    """Some streams sent together; wall time from the first send to the last end."""

    streams: list[Stream]
    wall: float
    unsent: int = 0  # prompts left out: the budget was spent

    @property
    def cut(self) -> bool:
        return self.unsent > 0 or any(s.error is not None and s.error.startswith("cut:") for s in self.streams)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall if self.wall > 0 else 0.0

    @property
    def ttfts(self) -> list[float]:
        return sorted(t for s in self.streams if (t := s.ttft) is not None)

    @property
    def broken(self) -> list[Stream]:
        return [s for s in self.streams if s.broken]

    def ttft_text(self) -> str:
        ttfts = self.ttfts
        if not ttfts:
            return "no first token"
        return f"{ms(statistics.median(ttfts))} / {ms(ttfts[-1])}"


async def one_client(client: httpx.AsyncClient) -> Phase:
    started = time.perf_counter()
    deadline = started + PHASE_BUDGET
    streams = []
    for prompt in PROMPTS:
        if time.perf_counter() >= deadline:
            break
        streams.append(await chat(client, prompt, MAX_TOKENS, deadline=deadline))
    return Phase(streams, time.perf_counter() - started, unsent=len(PROMPTS) - len(streams))


async def clients_at_once(client: httpx.AsyncClient) -> Phase:
    started = time.perf_counter()
    deadline = started + PHASE_BUDGET
    streams = await asyncio.gather(*(chat(client, prompt, MAX_TOKENS, deadline=deadline) for prompt in PROMPTS))
    return Phase(list(streams), time.perf_counter() - started)


@dataclass
class Freed:
    """Disconnect -> slot free: seconds from closing one stream to a newcomer's first token."""

    seconds: float | None  # None: no first token within FREE_TIMEOUT
    holders: int
    left_s: float  # how long the closed stream would still have run, at its own pace
    newcomer: Stream

    def text(self) -> str:
        if self.seconds is None:
            return f"not freed in {FREE_TIMEOUT:.0f} s ({self.newcomer.why()})"
        natural = " (= the stream's natural end)" if self.seconds >= 0.8 * self.left_s else ""
        return f"{ms(self.seconds)}{natural}"


async def disconnect_to_first_token(make_client: Callable[[], httpx.AsyncClient], slots: int) -> Freed:
    """Fill every slot with a long stream, close one, and time a newcomer's first token."""
    clients = [make_client() for _ in range(slots + 1)]  # a connection each, so that closing one closes it
    holders = [Stream() for _ in range(slots)]
    tasks = [
        asyncio.ensure_future(chat(c, PROMPTS[i % len(PROMPTS)], LONG_TOKENS, s))
        for i, (c, s) in enumerate(zip(clients, holders, strict=False))
    ]
    try:
        deadline = time.perf_counter() + START_TIMEOUT
        while not all(h.chunks >= HELD_TOKENS for h in holders):
            ended = [h for t, h in zip(tasks, holders, strict=True) if t.done()]
            if ended:
                raise RuntimeError(f"a stream holding a slot ended early: {ended[0].why()}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the {slots} long streams did not all start in {START_TIMEOUT:.0f} s")
            await asyncio.sleep(0.005)
        victim = holders[0]
        assert victim.first is not None
        closed = time.perf_counter()
        pace = (closed - victim.first) / max(victim.chunks - 1, 1)
        left = pace * (LONG_TOKENS - victim.chunks)
        tasks[0].cancel()  # leaving `client.stream(...)` closes the connection
        newcomer = Stream()
        arrival = asyncio.ensure_future(chat(clients[-1], PROMPTS[-1], 8, newcomer))
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[0]
        deadline = closed + FREE_TIMEOUT
        while newcomer.first is None and not arrival.done() and time.perf_counter() < deadline:
            await asyncio.sleep(0.001)
        seconds = None if newcomer.first is None else newcomer.first - closed
        arrival.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await arrival
        return Freed(seconds, slots, left, newcomer)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.aclose()


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


@dataclass
class Result:
    server: Server
    ready_s: float = 0.0
    one: Phase | None = None
    eight: list[Phase] = field(default_factory=list)
    freed: Freed | None = None
    stopped: str = ""
    others_cpu: float = 0.0  # CPUs other processes used while this server was measured

    @property
    def best(self) -> Phase:
        return max(self.eight, key=lambda p: p.tok_s)

    @property
    def broken(self) -> list[Stream]:
        assert self.one is not None
        return [s for p in [self.one, *self.eight] for s in p.broken]

    @property
    def streams(self) -> int:
        assert self.one is not None
        return sum(len(p.streams) for p in [self.one, *self.eight])


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


async def measure(server: Server) -> Result:
    result = Result(server)
    async with serving(server) as (process, make_client), make_client() as client:
        result.ready_s = await process.wait_ready(client)
        warm = await chat(client, "Say hello.", 8, deadline=time.perf_counter() + PHASE_BUDGET)
        if warm.broken:
            raise RuntimeError(f"{server.label}: warm-up request broken: {warm.why()}\n{process.log_tail()}")
        watch = CpuWatch(process.process.pid)
        result.one = await one_client(client)
        print(f"    {server.label}: 1 client {result.one.tok_s:.1f} tok/s, first token {result.one.ttft_text()}")
        for _ in range(ROUNDS):
            if result.eight and result.eight[-1].cut:
                break  # the budget was too short once already
            phase = await clients_at_once(client)
            result.eight.append(phase)
            print(
                f"    {server.label}: 8 clients {phase.tok_s:.1f} tok/s ({phase.tokens} tokens), first token "
                f"{phase.ttft_text()}, {len(phase.broken)} broken",
                flush=True,
            )
        for why, count in collections.Counter(s.why() for s in result.broken).most_common():
            print(f"    {server.label}: {count} broken: {why}")
        result.freed = await disconnect_to_first_token(make_client, server.slots)
        print(f"    {server.label}: disconnect -> first token {result.freed.text()}", flush=True)
        result.others_cpu = watch.others()
        print(f"    {server.label}: other processes used {result.others_cpu:.2f} CPUs meanwhile", flush=True)
    result.stopped = process.stopped
    print(f"    {server.label}: stopped: {result.stopped}", flush=True)
    return result


async def paired(ours: Server, native: Server) -> list[tuple[float, float]]:
    """8-client rounds taking turns on both servers: (ours, native) tok/s, PAIRED_ROUNDS each."""
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for server in (ours, native):
            process, make_client = await stack.enter_async_context(serving(server))
            client = await stack.enter_async_context(make_client())
            await process.wait_ready(client)
            await one_client(client)  # warm, and caches in the slots as in the separate run
            clients.append(client)
        rounds: list[tuple[float, float]] = []
        for _ in range(PAIRED_ROUNDS):
            mine = await clients_at_once(clients[0])
            theirs = await clients_at_once(clients[1])
            if mine.broken or theirs.broken or mine.cut or theirs.cut:  # a busy neighbour: left out, said so
                print("    paired: a round had broken or cut streams; left out", flush=True)
                continue
            rounds.append((mine.tok_s, theirs.tok_s))
            print(f"    paired: ours {mine.tok_s:.1f} tok/s, llama-server {theirs.tok_s:.1f} tok/s", flush=True)
        return rounds


def paired_ratios(rounds: list[tuple[float, float]]) -> list[float]:
    """Each round of ours over the mean of the native rounds beside it (the one after, and the one before)."""
    ratios = []
    for i, (mine, theirs) in enumerate(rounds):
        beside = [theirs] + ([rounds[i - 1][1]] if i else [])
        ratios.append(_ratio(mine, statistics.mean(beside)))
    return ratios


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def _tok_s(phase: Phase) -> str:
    text = f"{phase.tok_s:.1f}"
    if phase.broken:
        text += f" ({len(phase.broken)}/{len(phase.streams)} broken)"
    return text + (f" (cut at {PHASE_BUDGET:.0f} s)" if phase.cut else "")


def _add_rows(report: Report, results: dict[str, Result], pairs: list[tuple[float, float]]) -> None:
    ours, peer, default = results["ours"], results["peer"], results["peer_default"]
    native = results.get("native")
    assert ours.one is not None and peer.one is not None

    def others(text: Callable[[Result], str]) -> str:
        shown = [(r, text(r)) for r in (peer, default, native) if r is not None]
        return "; ".join(f"{r.server.label}: {t}" for r, t in shown)

    def one(r: Result) -> Phase:
        assert r.one is not None
        return r.one

    def broken(r: Result) -> str:
        return f"{len(r.broken)}/{r.streams}" if r.broken else "none"

    report.add(
        "serve: 1 client, 8 prompts in turn, tok/s",
        f"{_tok_s(ours.one)} tok/s",
        others(lambda r: _tok_s(one(r))),
        f"{_ratio(ours.one.tok_s, peer.one.tok_s):.2f}x llama-cpp-python (no target)",
    )
    report.add(
        "serve: 1 client, first token p50 / max",
        ours.one.ttft_text(),
        others(lambda r: one(r).ttft_text()),
        "no target",
    )
    eight_ratio = _ratio(ours.best.tok_s, peer.best.tok_s)
    report.add(
        f"serve: 8 clients at once, aggregate tok/s (best of {ROUNDS})",
        f"{_tok_s(ours.best)} tok/s",
        others(lambda r: _tok_s(r.best)),
        verdict(eight_ratio >= 3, f"{eight_ratio:.2f}x llama-cpp-python (target >= 3x)"),
    )
    ours_max, peer_max = ours.best.ttfts[-1:], peer.best.ttfts[-1:]
    ttft_ratio = _ratio(ours_max[0], peer_max[0]) if ours_max and peer_max else float("inf")
    report.add(
        "serve: 8 clients at once, first token p50 / max",
        ours.best.ttft_text(),
        others(lambda r: r.best.ttft_text()),
        verdict(ttft_ratio <= 0.1, f"max {ttft_ratio:.3f}x llama-cpp-python's (target <= 0.1x)"),
    )
    if native is not None and pairs:
        ratios = paired_ratios(pairs)
        native_ratio = statistics.median(ratios)
        report.add(
            f"serve: 8 clients at once vs native llama-server, both up, {len(pairs)} rounds each in turn",
            f"{statistics.median(m for m, _ in pairs):.1f} tok/s",
            f"llama-server {statistics.median(t for _, t in pairs):.1f} tok/s; round ratios "
            + " ".join(f"{r:.2f}" for r in ratios),
            verdict(native_ratio >= 1.0, f"median {native_ratio:.2f}x (target >= 1.0x)"),
        )
    report.add(
        "serve: broken streams, of all sent with 1 and 8 clients",
        broken(ours),
        others(broken),
        verdict(not ours.broken, "target none"),
    )
    assert ours.freed is not None
    report.add(
        "serve: disconnect -> slot free (N streams fill every slot, 1 is closed; a new request's first token)",
        f"{ours.freed.text()}, N={ours.freed.holders}",
        others(lambda r: f"{r.freed.text()}, N={r.freed.holders}" if r.freed else "-"),
        verdict(ours.freed.seconds is not None and ours.freed.seconds < 0.8 * ours.freed.left_s, "freed on close"),
    )
    report.add(
        "serve: stop on SIGTERM",
        ours.stopped,
        others(lambda r: r.stopped),
        verdict(ours.stopped.startswith("exited") and "child" not in ours.stopped, "no process left"),
    )
    busiest = max(r.others_cpu for r in results.values())
    report.add(
        f"serve: CPUs other processes used meanwhile (of {os.cpu_count()})",
        f"{ours.others_cpu:.2f}",
        others(lambda r: f"{r.others_cpu:.2f}"),
        "quiet: comparable" if busiest < 0.2 else "BUSY: figures skewed by the neighbours, not comparable",
    )


async def run(report: Report) -> None:
    needed = ("httpx", "psutil", "fastapi", "uvicorn", "sse_starlette")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(
            f"bench serve needs {', '.join(missing)} (httpx, psutil, and the server extras of llama-isolate and "
            "of llama-cpp-python): pip install -e '.[dev]'"
        )
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM unwinds like Ctrl-C does, so that no server outlives the benchmark.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        results: dict[str, Result] = {}
        found = servers()
        for server in found:
            print(f"  {server.label}", flush=True)
            results[server.key] = await measure(server)
        pairs: list[tuple[float, float]] = []
        if "native" in results:
            print("  ours and llama-server in turn", flush=True)
            pairs = await paired(found[0], results["native"].server)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    _add_rows(report, results, pairs)
