"""Prefix reuse over HTTP: the next turn of a long conversation, and a system prompt many users share.

Our server runs as a subprocess (as in `bench serve`). Each request carries
its whole conversation, as an OpenAI client sends it:

- **next turn**: a conversation of about 2,000 tokens gets its next turn;
  its time to first token is set beside a fresh 50-token prompt's. Measured
  right after the previous turn, and again after four other conversations
  ran in between (their prompts take the slots, so the long conversation's
  cache is parked in RAM and restored). Target: at most 1.5x the fresh prompt.
- **shared system prompt**: eight users with the same ~1,000-token system
  prompt and their own questions, one after another: how many of the system
  prompt's tokens were processed in all (once is the ideal), and the later
  users' time to first token beside the first one's.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .common import N_THREADS, Report, ms, verdict
from .servers import Server, serving

if TYPE_CHECKING:
    import httpx

ROUNDS = 3
FILLER = " ".join(f"Item {i}: the {i}th crate holds {i * 3} green apples and {i * 5} red ones." for i in range(80))
SYSTEM = "You are the stock-keeper of a fruit warehouse. Here is the inventory. " + FILLER[: len(FILLER) // 2]
# Fresh prompts of about 50 tokens with nothing in common beyond the chat
# template, so none of them can reuse another's cache.
FRESH = (
    "I am planning a picnic for my family next weekend. What fruits should I pack so that everyone, "
    "including the children, finds something they like? Some of us cannot eat nuts, and the food will sit "
    "in a warm car for two hours.",
    "Our village library wants to start a reading club for teenagers. Which three novels would spark "
    "long discussions, and why would each of them work well? The members are between thirteen and sixteen "
    "years old and meet once a month.",
    "My bicycle chain keeps slipping off the rear gears when I climb steep hills. What are the usual "
    "causes, and which can I fix at home with basic tools? It is an old steel touring bike with eight gears "
    "that I bought second hand.",
)


def ours() -> Server:
    threads = str(N_THREADS)
    argv = ("-m", "llama_isolate", "serve", "--model", "{model}", "--port", "{port}", "--parallel", "4")
    return Server("ours", "llama_isolate", 4, (sys.executable, *argv, "--threads", threads, "--ctx", "4096"))


def conversation(round_: int) -> list[dict[str, Any]]:
    """About 2,000 tokens of history: the inventory, then questions and long answers."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": f"Warehouse {round_}. {SYSTEM}"}]
    for turn in range(6):
        messages.append({"role": "user", "content": f"Question {turn}: what is in crate {turn * 7 + round_}?"})
        messages.append({"role": "assistant", "content": FILLER[turn * 600 : turn * 600 + 600]})
    return messages


@dataclass
class Answer:
    """A streamed answer: its text, its time to first token and its usage."""

    text: str
    ttft: float
    prompt_tokens: int
    cached_tokens: int


async def chat(client: httpx.AsyncClient, messages: str | list[dict[str, Any]], max_tokens: int) -> Answer:
    """Stream one chat completion of a whole conversation (or one user message)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    body = {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent, first, pieces, usage = time.perf_counter(), None, [], None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"the stream failed: {chunk['error']}")
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                if choice["delta"].get("content"):
                    first = first or time.perf_counter()
                    pieces.append(choice["delta"]["content"])
    if first is None or usage is None:
        raise RuntimeError("the stream had no text or no usage")
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    return Answer("".join(pieces), first - sent, usage["prompt_tokens"], cached)


async def run(report: Report) -> None:
    async with serving(ours()) as (process, make_client), make_client() as client:
        await process.wait_ready(client)
        await chat(client, "Say hello.", 4)
        fresh, next_turn, after_others, sizes, fresh_sizes = [], [], [], [], []
        for round_ in range(ROUNDS):
            history = conversation(round_)
            first = await chat(client, [*history, {"role": "user", "content": "How many crates are there?"}], 16)
            history += [
                {"role": "user", "content": "How many crates are there?"},
                {"role": "assistant", "content": first.text},
            ]
            ask = [*history, {"role": "user", "content": "Which crate has the most apples?"}]
            turn = await chat(client, ask, 8)
            next_turn.append(turn.ttft)
            sizes.append(turn.prompt_tokens)
            for other in range(4):  # four other conversations take the slots
                await chat(client, f"Tell me a fact about the number {other + round_ * 4}.", 8)
            history += [
                {"role": "user", "content": "Which crate has the most apples?"},
                {"role": "assistant", "content": turn.text},
            ]
            later = await chat(client, [*history, {"role": "user", "content": "And the fewest?"}], 8)
            after_others.append(later.ttft)
            alone = await chat(client, FRESH[round_ % len(FRESH)], 8)
            fresh.append(alone.ttft)
            fresh_sizes.append(alone.prompt_tokens - alone.cached_tokens)
        base = statistics.median(fresh)
        for label, values in (("right after", next_turn), ("after 4 other conversations", after_others)):
            ratio = statistics.median(values) / base
            report.add(
                f"HTTP: next turn of a {min(sizes)}-token conversation, {label}",
                ms(statistics.median(values)),
                f"fresh prompt ({min(fresh_sizes)}-{max(fresh_sizes)} new tokens) {ms(base)}",
                verdict(ratio <= 1.5, f"{ratio:.2f}x (target <= 1.5x)"),
            )
        users = []
        for i in range(8):
            question = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Crate {i}?"}]
            users.append(await chat(client, question, 8))
        system_tokens = users[0].prompt_tokens - 12  # about: the question and the template around it
        processed = sum(u.prompt_tokens - u.cached_tokens for u in users)
        later_ttft = statistics.median(u.ttft for u in users[1:])
        first_ttft = users[0].ttft
        report.add(
            f"HTTP: 8 users sharing a {system_tokens}-token system prompt",
            f"{processed} prompt tokens processed",
            f"{8 * users[0].prompt_tokens} without reuse",
            verdict(
                processed < 2 * users[0].prompt_tokens, f"first token {ms(later_ttft)}, first user {ms(first_ttft)}"
            ),
        )
