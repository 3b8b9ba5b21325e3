"""Streaming chat clients for the HTTP benchmarks: one stream, and phases of several clients.

A phase sends the 8 `PROMPTS` (`MAX_TOKENS` tokens each, temperature 0) from
N clients at once, each sending its share one after another; its figures
are the aggregate tokens per second (completion tokens over the wall time
from the first request to the last stream's end) and the times to first
token. A stream is broken when it fails over HTTP or ends without a chunk
with a `finish_reason` and `[DONE]`. Every phase has a time budget, after
which its streams are cut and counted broken, so a server that crawls (beside
a busy neighbour) still lets the benchmark end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .common import ms

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
PHASE_BUDGET = 30.0
LONG_TOKENS = 512  # the streams that hold the slots while one is closed
HELD_TOKENS = 4  # each holder has streamed this many tokens before the close
START_TIMEOUT = 30.0  # for the long streams that fill every slot to all stream
FREE_TIMEOUT = 20.0


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


async def clients(client: httpx.AsyncClient, n: int) -> Phase:
    """`n` clients at once, each sending its share of the `PROMPTS` one after another (n = 1: all in turn)."""
    started = time.perf_counter()
    deadline = started + PHASE_BUDGET
    shares = [PROMPTS[i::n] for i in range(n)]

    async def one(prompts: list[str]) -> list[Stream]:
        streams = []
        for prompt in prompts:
            if time.perf_counter() >= deadline:
                break
            streams.append(await chat(client, prompt, MAX_TOKENS, deadline=deadline))
        return streams

    done = await asyncio.gather(*(one(share) for share in shares))
    streams = [stream for each in done for stream in each]
    return Phase(streams, time.perf_counter() - started, unsent=len(PROMPTS) - len(streams))


async def one_client(client: httpx.AsyncClient) -> Phase:
    """The 8 prompts one after another."""
    return await clients(client, 1)


async def clients_at_once(client: httpx.AsyncClient) -> Phase:
    """The 8 prompts at once."""
    return await clients(client, len(PROMPTS))


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
