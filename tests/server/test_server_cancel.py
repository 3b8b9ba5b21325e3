"""A client that goes away stops its work, whatever state it was in; the others carry on; crashes end cleanly."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from llama_isolate import ContextParams, LlamaLoad, LlamaStatus
from llama_isolate.server import create_app, service
from llama_isolate.server.metrics import ServerMetrics
from llama_isolate.server.service import ModelService
from llama_isolate.testing import make_tiny_model

from ..helpers.logs import flag_on_log
from ..helpers.models import children
from ..helpers.server_tools import CHAT, COMPLETIONS, COUNTING, ask, metric, server_load, wait_until
from ..helpers.serving import serving

RUNNING = "llama_isolate_prompts_running"
GENERATING = "llama_isolate_prompts_generating"
QUEUED = "llama_isolate_queue_length"


@pytest.fixture(scope="module")
def base_url(model_path: Path) -> Iterator[str]:
    with serving(create_app(server_load(model_path, n_parallel=2, n_ctx=2048))) as url:
        yield url


def gone(base_url: str, endpoint: str) -> float:
    return metric(base_url, "llama_isolate_requests_total", endpoint=endpoint, status="499")


def raw_request(base_url: str, path: str, body: dict[str, object]) -> socket.socket:
    """An HTTP request sent on a plain socket, left open: closing the socket is the client leaving."""
    url = urlparse(base_url)
    sock = socket.create_connection((url.hostname, url.port))
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    sock.sendall(head.encode() + data)
    return sock


class Neighbour:
    """Another client streaming at the same time, read to its end on a thread."""

    def __init__(self, base_url: str, max_tokens: int) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._run, args=(base_url, max_tokens))
        self._thread.start()

    def _run(self, base_url: str, max_tokens: int) -> None:
        with httpx.stream(
            "POST", base_url + COMPLETIONS, json={**COUNTING, "max_tokens": max_tokens}, timeout=120
        ) as r:
            self.lines = [line for line in r.iter_lines() if line]

    def result(self) -> list[str]:
        self._thread.join(timeout=120)
        return self.lines


def assert_finished_whole(lines: list[str], tokens: int) -> None:
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][len("data: ") :])
    assert last["choices"][0]["finish_reason"] == "length"
    assert len(lines) - 2 == tokens  # one chunk per token, all of them


def test_a_streaming_client_leaving_mid_answer_stops_it_and_not_its_neighbour(base_url: str) -> None:
    generated = metric(base_url, "llama_isolate_tokens_generated_total")
    left = gone(base_url, COMPLETIONS)
    with httpx.stream("POST", base_url + COMPLETIONS, json=COUNTING, timeout=60) as leaving:
        lines = leaving.iter_lines()
        next(lines)
        neighbour = Neighbour(base_url, 60)
        wait_until(lambda: metric(base_url, GENERATING) == 2, what="both generating")
    took = wait_until(lambda: metric(base_url, GENERATING) == 1, timeout=5, what="the stream to stop")
    assert took < 1.0  # ~1000 more tokens would take many seconds
    assert_finished_whole(neighbour.result(), 60)
    wait_until(lambda: metric(base_url, RUNNING) == 0, what="both ended")
    assert gone(base_url, COMPLETIONS) == left + 1
    assert metric(base_url, "llama_isolate_tokens_generated_total") - generated < 400


def test_a_non_streaming_client_leaving_mid_answer_stops_it(base_url: str) -> None:
    generated = metric(base_url, "llama_isolate_tokens_generated_total")
    sock = raw_request(base_url, COMPLETIONS, {**COUNTING, "stream": False})
    wait_until(lambda: metric(base_url, GENERATING) == 1, what="it generates")
    sock.close()
    took = wait_until(lambda: metric(base_url, RUNNING) == 0, timeout=5, what="the prompt to stop")
    assert took < 1.0
    assert metric(base_url, "llama_isolate_tokens_generated_total") - generated < 400


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_leaving_while_reading_its_prompt_aborts_the_prompt(base_url: str, stream: bool) -> None:
    processed = metric(base_url, "llama_isolate_prompt_tokens_processed_total")
    long_prompt = " ".join(f"Note {i}: the jar is in cupboard {i}." for i in range(120))  # ~1600 tokens
    sock = raw_request(base_url, CHAT, {"messages": ask(long_prompt), "max_tokens": 8, "stream": stream})
    wait_until(lambda: metric(base_url, RUNNING) == 1, what="it runs")
    assert metric(base_url, GENERATING) == 0  # still reading the prompt (that takes seconds here)
    sock.close()
    took = wait_until(lambda: metric(base_url, RUNNING) == 0, timeout=5, what="the prompt to stop")
    assert took < 1.0
    assert metric(base_url, "llama_isolate_prompt_tokens_processed_total") - processed < 1500  # cut part-way


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_leaving_while_queued_never_starts(base_url: str, stream: bool) -> None:
    endpoint = CHAT
    left = gone(base_url, endpoint)
    with (
        httpx.stream("POST", base_url + COMPLETIONS, json=COUNTING, timeout=60) as first,
        httpx.stream("POST", base_url + COMPLETIONS, json=COUNTING, timeout=60) as second,
    ):
        first_lines, second_lines = first.iter_lines(), second.iter_lines()
        next(first_lines), next(second_lines)  # both slots busy
        sock = raw_request(base_url, endpoint, {"messages": ask("Hello"), "max_tokens": 4, "stream": stream})
        wait_until(lambda: metric(base_url, QUEUED) == 1, what="it queued")
        sock.close()
        wait_until(lambda: metric(base_url, QUEUED) == 0, timeout=5, what="it left the queue")
        assert metric(base_url, RUNNING) == 2  # it never started; the two others go on
        assert next(first_lines) is not None and next(second_lines) is not None  # still streaming
    wait_until(lambda: gone(base_url, endpoint) == left + 1, what="it was counted as gone")
    wait_until(lambda: metric(base_url, RUNNING) == 0, what="all ended")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_task_cancelled_from_outside_still_stops_its_prompt(model_path: Path, stream: bool) -> None:
    """Ray Serve ends the request of a client that left by cancelling its task: a plain `Task.cancel()`, which an
    anyio shield does not hold off, and it may come again while the request cleans up. The prompt must still stop."""
    app = create_app(server_load(model_path, n_parallel=2))
    body = json.dumps({**COUNTING, "stream": stream}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": COMPLETIONS,
        "raw_path": COMPLETIONS.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    requests: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    requests.put_nowait({"type": "http.request", "body": body, "more_body": False})

    async def ignore(_: object) -> None:
        pass

    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://x") as client:

        async def sample(name: str) -> float:
            for line in (await client.get("/metrics")).text.splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
            return 0.0

        async def until(name: str, value: float) -> float:
            start = time.monotonic()
            while await sample(name) != value:
                assert time.monotonic() - start < 10, f"{name} never became {value}"
                await asyncio.sleep(0.01)
            return time.monotonic() - start

        request = asyncio.create_task(app(scope, requests.get, ignore))  # receive: the body, then nothing
        await until(GENERATING, 1)
        while not request.done():  # again and again, so that a cancellation also lands inside the cleanup
            request.cancel()
            await asyncio.sleep(0)
        assert request.cancelled()
        assert await until(RUNNING, 0) < 1.0


def test_a_worker_crash_ends_streams_with_an_error_then_503_until_it_is_back(model_path: Path) -> None:
    with serving(create_app(server_load(model_path, n_parallel=2))) as url:
        with httpx.stream("POST", url + COMPLETIONS, json=COUNTING, timeout=60) as running:
            lines = running.iter_lines()
            next(lines)
            for worker in children():
                worker.kill()
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2][len("data: ") :])["error"]
        assert "died" in error["message"] and error["code"] == "worker_died"
        seen_503 = False
        deadline = time.monotonic() + 60
        while True:
            response = httpx.post(url + CHAT, json={"messages": ask("Hi"), "max_tokens": 2}, timeout=60)
            if response.status_code == 200:
                break
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["type"] == "service_unavailable_error"
            seen_503 = True
            assert time.monotonic() < deadline, "the worker did not come back"
            wait_until(lambda: httpx.get(url + "/health").status_code == 200, what="the restart")
        assert seen_503
        assert httpx.get(url + "/health").json() == {"status": "ok"}


def test_a_worker_killed_again_while_it_restarts_still_comes_back(model_path: Path) -> None:
    with serving(create_app(server_load(model_path, n_parallel=1))) as url:
        first = children()
        for worker in first:
            worker.kill()

        def restarting_worker() -> bool:
            fresh = [c for c in children() if c.pid not in {w.pid for w in first}]
            for worker in fresh:
                worker.kill()  # it dies while loading: the first attempt fails, the policy tries again
            return bool(fresh)

        wait_until(restarting_worker, what="the restarted worker")
        wait_until(lambda: httpx.get(url + "/health").status_code == 200, timeout=60, what="the server to recover")
        answer = httpx.post(url + CHAT, json={"messages": ask("Hi"), "max_tokens": 2}, timeout=60)
        assert answer.status_code == 200


async def test_a_replica_keeps_restarting_past_the_library_default_until_its_model_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "RESTARTS", dataclasses.replace(service.RESTARTS, backoff_s=0.01, max_backoff_s=0.02))
    path = make_tiny_model(tmp_path)
    load = LlamaLoad(path=path, context_params=ContextParams(n_ctx=256, n_threads=1, n_threads_batch=1))
    replica = ModelService(
        load, name="tiny", metrics=ServerMetrics().replica("tiny", 0), max_queue=None, init_timeout=None
    )
    await replica.start()
    try:
        away = path.rename(tmp_path / "away.gguf")  # every restart fails to load while it is gone
        with flag_on_log("restart attempt 8 failed") as eighth, flag_on_log("the worker is back") as back:
            pid = replica.ready().worker_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await asyncio.wait_for(eighth.wait(), 60)  # RestartPolicy() would have given up after 5
            assert replica.status is not LlamaStatus.READY
            away.rename(path)
            await asyncio.wait_for(back.wait(), 60)
        parent = replica.ready()
        fresh = parent.worker_pid
        assert fresh not in (None, pid)
        event = await parent.wait_for_completion(await parent.send_prompt("Hi", max_tokens=2))
        assert event.success, event.error
    finally:
        await replica.stop()
    assert fresh not in {child.pid for child in children()}  # (the module's server keeps its own worker)
