"""Replicas against one bigger context: `serve --replicas 2 --parallel 4` beside `--replicas 1 --parallel 8`.

Both servers are up at once and take turns, 8 streaming clients a round (the
prompts and length of `bench serve`), so that the drift of this kind of VM
hits both alike. Reported: aggregate tok/s and first-token p50 of each, and
the ratio. On a machine with one device the single context is expected to
win (its sequences share each weight read); replicas pay off with more
cores or devices than one context can use. See docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import statistics
import sys

from .common import N_THREADS, Report, ms, verdict
from .httpload import clients_at_once, one_client
from .serve import SLOTS
from .servers import Server, serving

ROUNDS = 4


def servers() -> tuple[Server, Server]:
    base = ("-m", "llama_isolate", "serve", "--model", "{model}", "--port", "{port}", "--threads", str(N_THREADS))
    one = Server("one", "1 replica, --parallel 8", SLOTS, (sys.executable, *base, "--parallel", str(SLOTS)))
    two = Server(
        "two",
        "2 replicas, --parallel 4 each",
        SLOTS,
        (sys.executable, *base, "--replicas", "2", "--parallel", str(SLOTS // 2)),
    )
    return one, two


async def run(report: Report) -> None:
    one, two = servers()
    tok_s: dict[str, list[float]] = {one.key: [], two.key: []}
    ttft: dict[str, list[float]] = {one.key: [], two.key: []}
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for server in (one, two):
            process, make_client = await stack.enter_async_context(serving(server))
            client = await stack.enter_async_context(make_client())
            await process.wait_ready(client)
            await one_client(client)  # warm
            clients[server.key] = client
        for _ in range(ROUNDS):
            for server in (one, two):
                phase = await clients_at_once(clients[server.key])
                if phase.broken or phase.cut:
                    print(f"    {server.label}: a round had broken or cut streams; left out", flush=True)
                    continue
                tok_s[server.key].append(phase.tok_s)
                ttft[server.key].append(statistics.median(phase.ttfts))
                print(f"    {server.label}: {phase.tok_s:.1f} tok/s", flush=True)
    if not tok_s[one.key] or not tok_s[two.key]:
        report.add("replicas: 8 clients", "no clean round", "", verdict(False, "see the log"))
        return
    mine, theirs = statistics.median(tok_s[two.key]), statistics.median(tok_s[one.key])
    report.add(
        f"replicas: 8 clients, 2 replicas x 4 vs 1 x 8 (median of {ROUNDS} rounds each, in turn)",
        f"{mine:.1f} tok/s, first token p50 {ms(statistics.median(ttft[two.key]))}",
        f"1 x 8: {theirs:.1f} tok/s, first token p50 {ms(statistics.median(ttft[one.key]))}",
        f"{mine / theirs:.2f}x (measured, no target)",
    )
