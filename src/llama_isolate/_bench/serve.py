"""Our OpenAI-compatible server beside native llama.cpp's `llama-server` and llama-cpp-python's server.

Each server runs as a subprocess with the default model and 2 threads, and
clients stream `/v1/chat/completions` (`httpload`: 8 prompts of 96 tokens,
temperature 0, from 1, 2, 4 and 8 clients at once). Native `llama-server`
runs only when `LLAMA_SERVER_BIN` or `LLAMA_NATIVE_DIR` gives it (`native`);
it is then the headline reference.

1. **Each server on its own**, idle, then beside one busy process (`sh -c
   'while :; do :; done'`, started once the server is up): tok/s and time to
   first token p50/max at 1, 2, 4 and 8 clients. These go into the picture
   (`plot.draw`) and the table's rows per client count. They are taken minutes
   apart, and this kind of VM drifts by 20 % within minutes, so:
2. **Ours and native up at once, taking turns**: 8 clients (`PAIRED_ROUNDS`),
   1 client, and 8 clients beside the busy process. Only these give the ratios
   the targets are about.
3. Per server, idle: "disconnect -> slot free" (as many long streams as it
   has slots; one client closes its connection and a new request is sent at
   that moment: the time to its first token); broken streams; how it stops on
   SIGTERM; and how much CPU the rest of the machine used meanwhile.

llama-cpp-python's server runs with `--interrupt_requests False` (its
default cuts a running stream short whenever another request waits).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import os
import signal
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import native, plot
from .common import N_THREADS, Report, verdict
from .floors import busy
from .httpload import Freed, Phase, Stream, clients, disconnect_to_first_token
from .servers import CpuWatch, Server, serving

CLIENTS = (1, 2, 4, 8)
PAIRED_ROUNDS = 4
BUSY_ROUNDS = 2
SLOTS = 8  # ours and llama-server: --parallel 8
PICTURE = Path("docs/bench-serve.png")


def servers() -> list[Server]:
    """The servers to measure, ours first; native llama-server only when its binary is given."""
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
            "llama-cpp-python",
            1,
            (sys.executable, *peer, *peer_threads, "--interrupt_requests", "False"),
        ),
    ]
    binary = native.Native.find().server
    if binary:
        # -c is the context of all slots together: 1024 each, as ours.
        native_options = ("--parallel", str(SLOTS), "-t", threads, "-tb", threads, "-c", str(SLOTS * 1024))
        found.append(Server("native", "llama-server", SLOTS, (binary, "-m", "{model}", *where, *native_options)))
    return found


@dataclass
class Result:
    """One server on its own: a phase per client count, idle and busy; then its disconnect and stop."""

    server: Server
    idle: dict[int, Phase] = field(default_factory=dict)
    busy: dict[int, Phase] = field(default_factory=dict)
    freed: Freed | None = None
    stopped: str = ""
    others_cpu: float = 0.0  # CPUs other processes used while it was measured idle

    @property
    def broken(self) -> list[Stream]:
        return [s for p in self.idle.values() for s in p.broken]

    @property
    def streams(self) -> int:
        return sum(len(p.streams) for p in self.idle.values())


async def measure(server: Server) -> Result:
    result = Result(server)
    async with serving(server) as (process, make_client), make_client() as client:
        await process.wait_ready(client)
        await clients(client, 1)  # warm up (and the prompts' caches, for every server alike)
        watch = CpuWatch(process.process.pid)
        for n in CLIENTS:
            result.idle[n] = phase = await clients(client, n)
            print(f"    {server.label}: {n} clients {_tok_s(phase)} tok/s, first token {phase.ttft_text()}", flush=True)
        result.others_cpu = watch.others()
        for why, count in collections.Counter(s.why() for s in result.broken).most_common():
            print(f"    {server.label}: {count} broken: {why}")
        result.freed = await disconnect_to_first_token(make_client, server.slots)
        print(f"    {server.label}: disconnect -> first token {result.freed.text()}", flush=True)
        with busy(1):
            for n in CLIENTS:
                result.busy[n] = phase = await clients(client, n)
                print(f"    {server.label}: busy, {n} clients {_tok_s(phase)} tok/s, first token {phase.ttft_text()}")
    result.stopped = process.stopped
    print(f"    {server.label}: stopped: {result.stopped}", flush=True)
    return result


@dataclass
class Pairs:
    """Rounds of ours and native taking turns: (ours, native) phases."""

    eight: list[tuple[Phase, Phase]] = field(default_factory=list)
    one: list[tuple[Phase, Phase]] = field(default_factory=list)
    busy_eight: list[tuple[Phase, Phase]] = field(default_factory=list)


async def paired(ours: Server, theirs: Server) -> Pairs:
    """Both servers up; rounds in turn (ours first, then native): 8 clients, 1 client, 8 clients beside a busy one."""
    pairs = Pairs()
    async with contextlib.AsyncExitStack() as stack:
        both = []
        for server in (ours, theirs):
            process, make_client = await stack.enter_async_context(serving(server))
            client = await stack.enter_async_context(make_client())
            await process.wait_ready(client)
            await clients(client, 1)  # warm, and the prompts' caches in the slots
            both.append(client)

        async def rounds(n: int, count: int, into: list[tuple[Phase, Phase]]) -> None:
            for _ in range(count):
                mine, other = await clients(both[0], n), await clients(both[1], n)
                into.append((mine, other))
                print(f"    paired, {n} clients: ours {_tok_s(mine)}, llama-server {_tok_s(other)} tok/s", flush=True)

        await rounds(8, PAIRED_ROUNDS, pairs.eight)
        await rounds(1, PAIRED_ROUNDS - 1, pairs.one)
        with busy(1):
            await rounds(8, BUSY_ROUNDS, pairs.busy_eight)
    return pairs


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
    return text + (" (cut at its time budget)" if phase.cut else "")


def _per_clients(phases: dict[int, Phase]) -> str:
    return " / ".join(_tok_s(phases[n]) for n in CLIENTS if n in phases)


def _idle(result: Result) -> dict[int, Phase]:
    return result.idle


def _busy(result: Result) -> dict[int, Phase]:
    return result.busy


def _pair_rows(report: Report, pairs: Pairs) -> None:
    def row(figure: str, rounds: list[tuple[Phase, Phase]], target: float) -> None:
        tok = [(a.tok_s, b.tok_s) for a, b in rounds]
        ratios = paired_ratios(tok)
        ratio = statistics.median(ratios)
        report.add(
            f"serve: {figure} vs native llama-server, both up, {len(rounds)} rounds each in turn",
            f"{statistics.median(m for m, _ in tok):.1f} tok/s",
            f"llama-server {statistics.median(t for _, t in tok):.1f} tok/s; round ratios "
            + " ".join(f"{r:.2f}" for r in ratios),
            verdict(ratio >= target, f"median {ratio:.2f}x (target >= {target:g}x)"),
        )

    row("8 clients", pairs.eight, 1.0)
    longest = [(max(a.ttfts, default=0.0), max(b.ttfts, default=0.0)) for a, b in pairs.eight]
    mine, theirs = statistics.median(a for a, _ in longest), statistics.median(b for _, b in longest)
    report.add(
        "serve: 8 clients, longest first token, in the same paired rounds (median)",
        f"{mine * 1000:.0f} ms",
        f"llama-server {theirs * 1000:.0f} ms",
        verdict(mine <= theirs, "target <= native's"),
    )
    row("1 client", pairs.one, 1.0)
    row("8 clients beside one busy process", pairs.busy_eight, 3.0)


def _add_rows(report: Report, results: dict[str, Result], pairs: Pairs | None, picture: Path | None) -> None:
    ours = results["ours"]
    others = [r for key, r in results.items() if key != "ours"]

    def beside(text: Callable[[Result], str]) -> str:
        return "; ".join(f"{r.server.label}: {text(r)}" for r in others)

    if pairs is not None:
        _pair_rows(report, pairs)
    counts = "/".join(str(n) for n in CLIENTS)
    for condition, phases in (("each server on its own", _idle), ("beside one busy process", _busy)):
        figure = f"serve: tok/s at {counts} clients, {condition}"
        shown = beside(lambda r, phases=phases: _per_clients(phases(r)))  # type: ignore[misc]
        report.add(figure, _per_clients(phases(ours)), shown, "see paired rows")
    first = "serve: 8 clients, first token p50 / max, each on its own"
    report.add(first, ours.idle[8].ttft_text(), beside(lambda r: r.idle[8].ttft_text()), "no target")
    report.add(
        "serve: broken streams, of all sent idle",
        f"{len(ours.broken)}/{ours.streams}" if ours.broken else "none",
        beside(lambda r: f"{len(r.broken)}/{r.streams}" if r.broken else "none"),
        verdict(not ours.broken, "target none"),
    )
    assert ours.freed is not None
    report.add(
        "serve: disconnect -> slot free (N streams fill every slot, 1 is closed; a new request's first token)",
        f"{ours.freed.text()}, N={ours.freed.holders}",
        beside(lambda r: f"{r.freed.text()}, N={r.freed.holders}" if r.freed else "-"),
        verdict(ours.freed.seconds is not None and ours.freed.seconds < 0.8 * ours.freed.left_s, "freed on close"),
    )
    clean = ours.stopped.startswith("exited") and "child" not in ours.stopped
    report.add("serve: stop on SIGTERM", ours.stopped, beside(lambda r: r.stopped), verdict(clean, "no process left"))
    busiest = max(r.others_cpu for r in results.values())
    report.add(
        f"serve: CPUs other processes used while idle phases ran (of {os.cpu_count()})",
        f"{ours.others_cpu:.2f}",
        beside(lambda r: f"{r.others_cpu:.2f}"),
        "quiet: comparable" if busiest < 0.2 else "BUSY: figures skewed by the neighbours, not comparable",
    )
    if picture is not None:
        report.add("serve: the picture", str(picture), "tok/s and first token against clients", "")


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
        pairs = None
        if "native" in results:
            print("  ours and llama-server in turn", flush=True)
            pairs = await paired(found[0], results["native"].server)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    picture = plot.draw({r.server.label: (r.idle, r.busy) for r in results.values()}, CLIENTS, PICTURE)
    _add_rows(report, results, pairs, picture)
