"""Speculative decoding over HTTP: our server with and without `--speculative ngram`, beside native llama-server.

Every server runs the default model with 2 threads and 8 slots, and answers
the same greedy requests (`/v1/chat/completions`, streamed):

- **json**: a list of 8 records (about 300 tokens), to be shown again
  unchanged; the model copies it (mostly: it drifts here and there);
- **quote**: a paragraph, and a question answered by quoting it;
- **code**: a 300-token Python module, to be printed exactly; SmolLM2-135M
  rewrites code as it goes (``with open(file)`` for ``file.open()``), so a
  guess holds less often than the request suggests;
- **story**: free text, where a guess rarely holds (speculation must not lose).

One stream at a time, a request's speed is its generated tokens over the time
from its first token to its end (the prompt is cached after the first round,
as a chat's is); eight streams at once, it is the tokens of all over the wall
time. Native llama-server runs first with each `--spec-type` on the json
request; the fastest is its reference (`NATIVE_SPEC_TYPES`). Then all servers
are up together and take turns, `ROUNDS` times, so that drift in this kind of
VM falls on all of them alike; each ratio is the median of per-round ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import native
from .common import N_THREADS, Report, machine, verdict
from .httpload import Stream, chat
from .servers import Server, serving

if TYPE_CHECKING:
    import httpx

ROUNDS = 4
SLOTS = 8
CTX = 2048
NATIVE_SPEC_TYPES = ("ngram-simple", "ngram-map-k", "ngram-mod", "ngram-cache")
PICTURE = Path("docs/bench-speculative.png")

MODULE = '''import json
from pathlib import Path


def load_settings(path):
    """Read the settings file, or return the defaults when it is missing."""
    file = Path(path)
    if not file.exists():
        return {"theme": "light", "font_size": 12, "autosave": True}
    with file.open() as handle:
        return json.load(handle)


def save_settings(path, settings):
    """Write the settings file, creating its folder if needed."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("w") as handle:
        json.dump(settings, handle, indent=2)


def merge_settings(defaults, overrides):
    """Return the defaults updated with the overrides."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if value is not None:
            merged[key] = value
    return merged
'''
PARAGRAPH = (
    "The lighthouse at Skerry Point was built in 1871 from granite quarried on the island itself. Its lamp was "
    "first lit with paraffin, then with acetylene in 1910, and finally with electricity in 1954. The last keeper, "
    "Margaret Hall, left in 1988, when the light was automated and its beam was watched from the mainland."
)
PEOPLE = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi"]
RECORDS = json.dumps(
    [{"id": i, "name": n, "email": f"{n.lower()}@example.com", "active": i % 2 == 0} for i, n in enumerate(PEOPLE)],
    indent=2,
)
WORKLOADS = {
    "json": (f"Here is a JSON list:\n\n{RECORDS}\n\nShow the same list again, unchanged.", 360),
    "quote": (f"{PARAGRAPH}\n\nQuote, word for word, the sentences of the text above that give dates.", 120),
    "code": (f"Print the following code exactly as it is, without any changes:\n\n```python\n{MODULE}```", 360),
    "story": ("Write a short story about a fox who finds a lantern.", 200),
}
REPETITIVE = ("json", "quote", "code")
CROWD = ["json", "quote", "code", "story", "json", "quote", "code", "story"]  # eight streams at once
TARGETS = {"json": 1.6, "quote": 1.6, "code": 1.6, "story": 0.97, "crowd": 1.0}  # with / without speculation


@dataclass
class Figures:
    """One server's speeds, by workload ("crowd": eight streams at once), one value per round."""

    speeds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, workload: str, speed: float) -> None:
        self.speeds.setdefault(workload, []).append(speed)


def servers(native_spec: str | None) -> list[Server]:
    """Ours without and with speculation; native llama-server without it and with `native_spec` (when found)."""
    threads = str(N_THREADS)
    ours: tuple[str, ...] = (sys.executable, "-m", "llama_isolate", "serve", "--model", "{model}", "--port", "{port}")
    ours += ("--parallel", str(SLOTS), "--threads", threads, "--ctx", str(CTX))
    found = [
        Server("off", "llama_isolate", SLOTS, ours),
        Server("ngram", "llama_isolate --speculative ngram", SLOTS, (*ours, "--speculative", "ngram")),
    ]
    binary = native.Native.find().server
    if binary:
        base: tuple[str, ...] = (binary, "-m", "{model}", "--host", "127.0.0.1", "--port", "{port}", "-t", threads)
        base += ("-tb", threads)
        base += ("--parallel", str(SLOTS), "-c", str(SLOTS * CTX))
        found.append(Server("native", "llama-server", SLOTS, base))
        if native_spec:
            label = f"llama-server --spec-type {native_spec}"
            found.append(Server("native-spec", label, SLOTS, (*base, "--spec-type", native_spec)))
    return found


def speed(stream: Stream) -> float:
    """Generated tokens per second, from the first token to the end."""
    if stream.broken or stream.first is None or stream.end is None or stream.end <= stream.first:
        return 0.0
    return max(0, stream.tokens - 1) / (stream.end - stream.first)


async def one(client: httpx.AsyncClient, workload: str) -> Stream:
    prompt, max_tokens = WORKLOADS[workload]
    return await chat(client, prompt, max_tokens)


async def crowd(make_client: Callable[[], httpx.AsyncClient]) -> float:
    """Eight streams at once: their tokens over the wall time."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(make_client()) for _ in CROWD]
        started = time.perf_counter()
        streams = await asyncio.gather(*(one(client, name) for client, name in zip(clients, CROWD, strict=True)))
        wall = time.perf_counter() - started
    if any(s.broken for s in streams):
        return 0.0
    return sum(s.tokens for s in streams) / wall


async def best_native_spec() -> tuple[str | None, dict[str, float]]:
    """Each `--spec-type` of native llama-server on the JSON request (after a warm one); the fastest."""
    if native.Native.find().server is None:
        return None, {}
    tried: dict[str, float] = {}
    for kind in NATIVE_SPEC_TYPES:
        (server,) = [s for s in servers(kind) if s.key == "native-spec"]
        try:
            async with serving(server) as (process, make_client), make_client() as client:
                await process.wait_ready(client)
                await one(client, "json")
                tried[kind] = statistics.median([speed(await one(client, "json")) for _ in range(2)])
        except (RuntimeError, TimeoutError) as exc:  # a type this build does not take
            print(f"    llama-server --spec-type {kind}: failed ({str(exc)[:120]})", flush=True)
            continue
        print(f"    llama-server --spec-type {kind}: {tried[kind]:.1f} tok/s on the JSON", flush=True)
    best = max(tried, key=lambda k: tried[k]) if tried else None
    return best, tried


async def measure(chosen: Sequence[Server]) -> dict[str, Figures]:
    """All servers up at once, taking turns: per round, each workload alone, then the crowd, on each server."""
    figures = {server.key: Figures() for server in chosen}
    async with contextlib.AsyncExitStack() as stack:
        makers = {}
        for server in chosen:
            process, make_client = await stack.enter_async_context(serving(server))
            async with make_client() as client:
                await process.wait_ready(client)
                for name in WORKLOADS:  # warm: the prompts' caches, and the worker's first steps
                    await one(client, name)
            makers[server.key] = make_client
        for round_ in range(ROUNDS):
            for name in WORKLOADS:
                for server in chosen:
                    async with makers[server.key]() as client:
                        figures[server.key].add(name, speed(await one(client, name)))
            for server in chosen:
                figures[server.key].add("crowd", await crowd(makers[server.key]))
            line = ", ".join(
                f"{s.key} " + "/".join(f"{figures[s.key].speeds[w][-1]:.0f}" for w in (*WORKLOADS, "crowd"))
                for s in chosen
            )
            print(f"    round {round_ + 1} (json/quote/code/story/crowd tok/s): {line}", flush=True)
    return figures


def ratios(ours: list[float], theirs: list[float]) -> list[float]:
    return [a / b if b > 0 else 0.0 for a, b in zip(ours, theirs, strict=True)]


def _row(report: Report, figure: str, ours: list[float], theirs: list[float], *, reference: str, target: float) -> None:
    each = ratios(ours, theirs)
    ratio = statistics.median(each)
    report.add(
        figure,
        f"{statistics.median(ours):.1f} tok/s",
        f"{reference} {statistics.median(theirs):.1f} tok/s",
        verdict(ratio >= target, f"{ratio:.2f}x (rounds {' '.join(f'{r:.2f}' for r in each)}; target >= {target}x)"),
    )


async def run(report: Report) -> None:
    spec, tried = await best_native_spec()
    if tried:
        shown = ", ".join(f"{k} {v:.1f}" for k, v in sorted(tried.items(), key=lambda kv: -kv[1]))
        report.add("llama-server --spec-type on the JSON, tok/s", "", shown, f"best: {spec}")
    chosen = servers(spec)
    figures = await measure(chosen)
    off, on = figures["off"].speeds, figures["ngram"].speeds
    for name in (*WORKLOADS, "crowd"):
        what = "8 streams at once (2 of each)" if name == "crowd" else f"1 stream, {name}"
        _row(
            report,
            f"{what}: --speculative ngram vs off",
            on[name],
            off[name],
            reference="without",
            target=TARGETS[name],
        )
    if "native-spec" in figures:
        theirs = figures["native-spec"].speeds
        for name in REPETITIVE:
            label = f"llama-server --spec-type {spec}"
            _row(
                report,
                f"1 stream, {name}: ours with ngram vs native with",
                on[name],
                theirs[name],
                reference=label,
                target=1.0,
            )
    _picture(figures, {s.key: s.label for s in chosen})


def _picture(figures: dict[str, Figures], labels: dict[str, str]) -> None:
    """Bars of the median tok/s per workload and server, into `PICTURE` (needs matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        print("    no picture: matplotlib is not installed", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*WORKLOADS, "crowd"]
    figure, ax = plt.subplots(figsize=(10, 4.5), constrained_layout=True)
    width = 0.8 / len(figures)
    for i, (key, found) in enumerate(figures.items()):
        values = [statistics.median(found.speeds[n]) for n in names]
        ax.bar([x + i * width for x in range(len(names))], values, width, label=labels[key])
    ax.set_xticks([x + width * (len(figures) - 1) / 2 for x in range(len(names))])
    ax.set_xticklabels([*(f"{n} (1 stream)" for n in WORKLOADS), "8 streams"])
    ax.set_ylabel("generated tok/s (median of rounds)")
    ax.set_title(f"Speculative decoding, SmolLM2-135M, 2 threads\n{machine()}", fontsize=9)
    ax.legend(fontsize=8)
    figure.savefig(PICTURE, dpi=110)
    plt.close(figure)
    print(f"    picture: {PICTURE}", flush=True)
