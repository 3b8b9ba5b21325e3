"""Routing by cached prefix across Ray Serve replicas: a real cluster of 3, then a simulation of 32.

Real (about 5 minutes): a two-node `ray.cluster_utils.Cluster` on this
machine, 3 model replicas (one thread, two slots each), 6 conversations of 4
turns at once (a first message of about 250 tokens no other conversation
shares, then a short question a turn, 12 tokens an answer), streamed. The
application is deployed with our router and with Ray's default in turns
(``ROUNDS`` each, fresh replicas every time). Reported for turns 2-4: the
share of prompt tokens a KV cache held, and the time to the first token
(p50, p99).

Simulated: 32 replicas of 2 slots, 1,000 conversations arriving over
minutes, each 4 turns apart by a think time. A replica's caches are an LRU
of `CACHED_CONVERSATIONS` conversations; a request's first token costs
``fixed + per_token x uncached tokens`` and each generated token
``per_output``, measured first on the real replicas with one conversation
alone (a cold turn, then warm ones: nothing waits). New conversations
arrive at a rate that would keep the replicas `BUSY` if no turn found its
cache. Prefix routing
runs the real `llama_isolate.server.affinity.rank` against each replica's
real `PrefixLedger` (a single router, which knows what it sent: no report
delay); Ray's default is its rule: two random replicas, the one with fewer
requests in flight.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .common import Report, model_path, verdict

ROUNDS = 2
CALIBRATION_ROUNDS = 2
CONVERSATIONS = 6
TURNS = 4
MAX_TOKENS = 12
SIM_REPLICAS = 32
SIM_SLOTS = 2
SIM_CONVERSATIONS = 1000
CACHED_CONVERSATIONS = 32
"""Conversations a simulated replica's caches hold (its slots, and those parked in RAM): the default 1 GiB
parks about 30 of these conversations of a 7-8B model (about 40 MB each); of the 135M model, about 150."""
THINK_S = 8.0
"""Mean time a simulated user takes before the next turn."""
BUSY = 0.6
"""How busy new conversations keep the simulated replicas if no turn found its cache (Ray's default, nearly)."""
OPENING_TOKENS, QUESTION_TOKENS = 250, 12


def opening(tag: str, at: int) -> str:
    days = " ".join(f"On day {d} traveller {tag}{at} reached village {(d * 7 + at) % 13}." for d in range(16))
    return f"Conversation {tag}{at}. {days} What happened next?"


@dataclass
class Turn:
    prompt: int
    cached: int
    ttft: float
    total: float
    generated: int


@dataclass
class Measured:
    turns: list[Turn] = field(default_factory=list)

    @property
    def share(self) -> float:
        return sum(t.cached for t in self.turns) / max(1, sum(t.prompt for t in self.turns))

    def ttft(self, q: float) -> float:
        return _quantile([t.ttft for t in self.turns], q)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@contextmanager
def _cluster() -> Iterator[str]:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=3, resources={"llm": 3}, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def _deploy(routing: str) -> None:
    from ray import serve

    from llama_isolate import ContextParams, LlamaLoad, SamplerParams
    from llama_isolate.server import ServedModel
    from llama_isolate.server.ray import build_app

    load = LlamaLoad(
        path=model_path(),
        context_params=ContextParams(n_ctx=2048, n_parallel=2, n_threads=1),
        sampler_params=SamplerParams(greedy=True),
    )
    serve.delete("bench-ray")  # fresh replicas, empty caches
    app = build_app([ServedModel("smol", load)], min_replicas=3, resources={"llm": 1}, num_cpus=1, routing=routing)
    serve.run(app, name="bench-ray", route_prefix="/")


def _converse(url: str, tag: str, *, conversations: int = CONVERSATIONS, first_too: bool = False) -> Measured:
    import httpx

    measured = Measured()
    lock = threading.Lock()

    def talk(at: int) -> None:
        messages = [{"role": "user", "content": opening(tag, at)}]
        for turn in range(TURNS):
            body = {"messages": messages, "max_tokens": MAX_TOKENS, "stream": True}
            body["stream_options"] = {"include_usage": True}
            start = time.perf_counter()
            first, text, usage = None, "", None
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
                for line in response.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices", []):
                        if choice["delta"].get("content"):
                            first = first or time.perf_counter()
                            text += choice["delta"]["content"]
            end = time.perf_counter()
            assert usage is not None, "no usage in the stream"
            if turn > 0 or first_too:
                with lock:
                    measured.turns.append(
                        Turn(
                            usage["prompt_tokens"],
                            usage["prompt_tokens_details"]["cached_tokens"],
                            (first or end) - start,
                            end - start,
                            usage["completion_tokens"],
                        )
                    )
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "And after that?"}]

    threads = [threading.Thread(target=talk, args=(at,)) for at in range(conversations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return measured


@dataclass(frozen=True)
class Costs:
    """What a request costs a replica, fitted to the real run: first token, and each token after it."""

    fixed: float
    per_token: float
    per_output: float


def calibrate(url: str) -> Costs:
    """One conversation alone, turn after turn, on the deployed replicas: a cold turn and warm ones.

    Alone, a request waits for nothing, so its first token costs what its
    uncached tokens cost to read; the rest of its answer, what a token costs.
    """
    cold: list[Turn] = []
    warm: list[Turn] = []
    for round_ in range(CALIBRATION_ROUNDS):
        measured = _converse(url, f"calibrate{round_}-", conversations=1, first_too=True)
        cold.append(measured.turns[0])
        warm += measured.turns[1:]
    read = statistics.median(t.prompt - t.cached for t in cold) - statistics.median(t.prompt - t.cached for t in warm)
    spent = statistics.median(t.ttft for t in cold) - statistics.median(t.ttft for t in warm)
    per_token = max(spent / max(read, 1), 1e-5)
    fixed = max(statistics.median(t.ttft - per_token * (t.prompt - t.cached) for t in warm), 1e-3)
    per_output = statistics.median((t.total - t.ttft) / max(1, t.generated - 1) for t in cold + warm)
    return Costs(fixed, per_token, max(per_output, 1e-4))


# --- the simulation ---


@dataclass
class _Replica:
    slots: int
    running: int = 0
    waiting: list[Any] = field(default_factory=list)
    cache: OrderedDict[int, int] = field(default_factory=OrderedDict)  # conversation -> tokens its KV holds
    ledger: Any = None

    @property
    def in_flight(self) -> int:
        return self.running + len(self.waiting)


@dataclass
class _Chat:
    at: int
    turn: int = 0
    tokens: int = 0  # prompt tokens of the next turn
    body: dict[str, Any] = field(default_factory=dict)


def arrivals_per_s(costs: Costs) -> float:
    """New conversations a second that keep the replicas `BUSY` when every turn reads its whole prompt."""
    prompts = [OPENING_TOKENS + turn * (MAX_TOKENS + QUESTION_TOKENS) for turn in range(TURNS)]
    busy_s = sum(costs.fixed + costs.per_token * p + costs.per_output * (MAX_TOKENS - 1) for p in prompts)
    return BUSY * SIM_REPLICAS * SIM_SLOTS / busy_s


def simulate(routing: str, costs: Costs, *, seed: int = 1) -> Measured:
    """`SIM_CONVERSATIONS` conversations over `SIM_REPLICAS` replicas; turns 2-4 measured (see the module)."""
    from llama_isolate.server.affinity import PrefixLedger, ReplicaView, conversation_points, rank

    rng = random.Random(seed)
    replicas = [_Replica(SIM_SLOTS, ledger=PrefixLedger()) for _ in range(SIM_REPLICAS)]
    events: list[tuple[float, int, str, Any]] = []
    order = iter(range(10**9))

    def at(when: float, kind: str, what: Any) -> None:
        heapq.heappush(events, (when, next(order), kind, what))

    clock = 0.0
    arrivals = arrivals_per_s(costs)
    for index in range(SIM_CONVERSATIONS):
        clock += rng.expovariate(arrivals)
        chat = _Chat(index, tokens=OPENING_TOKENS)
        chat.body = {"model": "smol", "messages": [{"role": "user", "content": opening("sim", index)}]}
        at(clock, "arrive", chat)
    measured = Measured()

    def choose(chat: _Chat) -> _Replica:
        if routing == "prefix":
            points = conversation_points(chat.body)
            views = [ReplicaView(r.ledger, r.in_flight, r.slots) for r in replicas]
            return replicas[rank(points, views)[0]]
        a, b = rng.sample(replicas, 2)
        return a if a.in_flight <= b.in_flight else b

    def start(replica: _Replica, chat: _Chat, arrived: float, now: float) -> None:
        replica.running += 1
        held = replica.cache.get(chat.at, 0)
        if chat.at in replica.cache:
            replica.cache.move_to_end(chat.at)
        cached = min(held, chat.tokens - 1)
        first = now + costs.fixed + costs.per_token * (chat.tokens - cached)
        done = first + costs.per_output * (MAX_TOKENS - 1)
        if chat.turn > 0:
            measured.turns.append(Turn(chat.tokens, cached, first - arrived, done - arrived, MAX_TOKENS))
        if routing == "prefix":
            replica.ledger.record(conversation_points(chat.body))
        at(done, "done", (replica, chat))

    while events:
        now, _, kind, what = heapq.heappop(events)
        if kind == "arrive":
            replica = choose(what)
            if replica.running < replica.slots:
                start(replica, what, now, now)
            else:
                replica.waiting.append((what, now))
        else:
            replica, chat = what
            replica.running -= 1
            replica.cache[chat.at] = chat.tokens + MAX_TOKENS
            replica.cache.move_to_end(chat.at)
            while len(replica.cache) > CACHED_CONVERSATIONS:
                replica.cache.popitem(last=False)
            if replica.waiting:
                waiting, arrived = replica.waiting.pop(0)
                start(replica, waiting, arrived, now)
            chat.turn += 1
            if chat.turn < TURNS:
                chat.tokens += MAX_TOKENS + QUESTION_TOKENS
                chat.body["messages"] = [
                    *chat.body["messages"],
                    {"role": "assistant", "content": f"answer {chat.turn}"},
                    {"role": "user", "content": "And after that?"},
                ]
                at(now + rng.expovariate(1 / THINK_S), "arrive", chat)
    return measured


def _row(report: Report, figure: str, ours: Measured, theirs: Measured, *, target: float | None) -> None:
    shown = f"cached {ours.share:.0%}, TTFT p50 {ours.ttft(0.5) * 1000:.0f} ms p99 {ours.ttft(0.99) * 1000:.0f} ms"
    reference = (
        f"Ray's default: cached {theirs.share:.0%}, TTFT p50 {theirs.ttft(0.5) * 1000:.0f} ms "
        f"p99 {theirs.ttft(0.99) * 1000:.0f} ms"
    )
    ratio = theirs.ttft(0.5) / ours.ttft(0.5)
    text = f"TTFT p50 {ratio:.2f}x faster"
    if target is not None:
        report.add(figure, shown, reference, verdict(ours.share >= target, f"{text}; cached target >= {target:.0%}"))
    else:
        report.add(figure, shown, reference, text)


async def run(report: Report) -> None:
    """The section: Ray starts its nodes from the main thread only, so this blocks the (otherwise idle) loop."""

    def real() -> tuple[dict[str, Measured], Costs]:
        got = {"prefix": Measured(), "default": Measured()}
        with _cluster() as url:
            _deploy("prefix")
            costs = calibrate(url)
            for round_ in range(ROUNDS):
                for routing in ("prefix", "default"):
                    _deploy(routing)
                    measured = _converse(url, f"{routing}{round_}-")
                    got[routing].turns += measured.turns
                    print(f"    {routing}: cached {measured.share:.0%}", flush=True)
        return got, costs

    got, costs = real()
    _row(report, "ray: 3 replicas, 6 conversations x 4 turns, turns 2-4", got["prefix"], got["default"], target=0.9)
    print(
        f"    alone: first token {costs.fixed * 1000:.0f} ms + {costs.per_token * 1000:.2f} ms per uncached token, "
        f"{costs.per_output * 1000:.1f} ms per generated token",
        flush=True,
    )
    simulated: dict[str, Measured] = {}
    for routing in ("prefix", "default"):
        simulated[routing] = simulate(routing, costs)
    _row(
        report,
        f"ray, simulated: {SIM_REPLICAS} replicas, {SIM_CONVERSATIONS} conversations x {TURNS} turns, turns 2-4",
        simulated["prefix"],
        simulated["default"],
        target=0.9,
    )
