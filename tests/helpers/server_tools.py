"""Helpers for the server tests: a load and requests, free ports, metrics, errors, and waiting with a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from llama_isolate import ContextParams, LlamaLoad, SamplerParams

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
# Greedy, the model goes on counting until max_tokens: a generation that is sure to be long.
COUNTING = {"prompt": "1, 2, 3, 4, 5, 6, 7,", "max_tokens": 1000, "stream": True}


def server_load(model_path: Path, *, n_parallel: int = 2, n_ctx: int = 1024) -> LlamaLoad:
    return LlamaLoad(
        path=model_path,
        context_params=ContextParams(n_ctx=n_ctx, n_parallel=n_parallel, embeddings=True),
        sampler_params=SamplerParams(greedy=True),
    )


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric(base_url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if _canonical(key) == wanted:
            return float(value)
    return 0.0


def metric_total(base_url: str, name: str) -> float:
    """The sum of every series of `name` in /metrics, whatever its labels (a Ray front's: one per replica)."""
    total = 0.0
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        key, _, value = line.rpartition(" ")
        if not line.startswith("#") and key.partition("{")[0] == name:
            total += float(value)
    return total


def _canonical(key: str) -> str:
    if "{" not in key:
        return key
    name, _, rest = key.partition("{")
    parts = sorted(rest.rstrip("}").split(","))
    return name + "{" + ",".join(parts) + "}"


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "the condition") -> float:
    """Poll `condition` until it holds; returns the seconds it took, fails the test after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic() - start


def error_of(response: httpx.Response) -> dict[str, object]:
    """OpenAI's error object of a response, checked for its shape: all four fields, a message and a code."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    assert body["error"]["code"], body  # a program can always branch on it
    return dict(body["error"])
