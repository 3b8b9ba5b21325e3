"""The pieces between Ray Serve's front and a model replica, without a cluster: the ASGI bridge and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

pytest.importorskip("ray")

from llama_isolate.server.ray_front import REPLICA_LABEL, merge_expositions
from llama_isolate.server.ray_replica import Forwarded, Start, serve_asgi

from ..helpers.front import front_over


def bridge_app(events: list[str]) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"path": request.url.path, "query": request.url.query, "got": body}, status_code=201)

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                for at in range(1000):
                    yield f"chunk {at}\n".encode()
                    await asyncio.sleep(0.01)
                events.append("finished")
            except asyncio.CancelledError:
                events.append("cancelled")
                raise

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/stream", stream)])


def forwarded(method: str, path: str, body: bytes = b"", query: bytes = b"") -> Forwarded:
    return Forwarded(method, path, query, ((b"content-type", b"application/json"),), body, ("127.0.0.1", 5))


def test_a_forwarded_request_reaches_the_app_whole_and_its_answer_comes_back_status_first() -> None:
    async def run() -> list[Start | bytes]:
        return [item async for item in serve_asgi(bridge_app([]), forwarded("POST", "/echo", b'{"a": 1}', b"x=2"))]

    start, *body = asyncio.run(run())
    assert isinstance(start, Start) and start.status == 201
    assert (b"content-type", b"application/json") in start.headers
    assert b"".join(body) == b'{"path":"/echo","query":"x=2","got":{"a":1}}'  # type: ignore[arg-type]


def test_closing_the_answer_early_cancels_the_apps_call() -> None:
    events: list[str] = []

    async def run() -> None:
        answer = serve_asgi(bridge_app(events), forwarded("GET", "/stream"))
        start = await answer.__anext__()
        assert isinstance(start, Start) and start.status == 200
        assert await answer.__anext__() == b"chunk 0\n"
        await answer.aclose()  # what Ray does when the client leaves
        for _ in range(100):
            if events:
                break
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert events == ["cancelled"]


def replica_text(generated: float, running: float) -> str:
    registry = CollectorRegistry()
    Counter("llama_isolate_tokens_generated", "Tokens generated.", registry=registry).inc(generated)
    Gauge("llama_isolate_replica_up", "Up.", ["model", "replica"], registry=registry).labels("m", "0").set(running)
    return generate_latest(registry).decode()


def test_metrics_of_several_replicas_merge_into_one_exposition_with_a_label_each() -> None:
    merged = merge_expositions({"aaa": replica_text(5, 1), "bbb": replica_text(7, 0)}).decode()
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    generated = {s.labels[REPLICA_LABEL]: s.value for s in families["llama_isolate_tokens_generated"].samples
                 if s.name.endswith("_total")}  # fmt: skip
    assert generated == {"aaa": 5.0, "bbb": 7.0}
    up = families["llama_isolate_replica_up"].samples
    assert {(s.labels["replica"], s.labels[REPLICA_LABEL], s.value) for s in up} == {
        ("0", "aaa", 1.0),
        ("0", "bbb", 0.0),
    }
    assert merged.count("# TYPE llama_isolate_tokens_generated_total counter") == 1  # one family, not one per replica
    assert merge_expositions({}) == b""


async def ask(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.request(method, path, **kwargs)


def test_the_front_refuses_a_request_without_the_key_or_too_large_itself_and_counts_it_as_the_fronts() -> None:
    app, seen = front_over(bridge_app([]), api_key="k")
    body = {"messages": [{"role": "user", "content": "x" * 2000}]}
    refused = asyncio.run(ask(app, "POST", "/v1/chat/completions", json=body))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    headers = {"Authorization": "Bearer k"}
    too_large = asyncio.run(ask(app, "POST", "/v1/chat/completions", json=body, headers=headers))
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 100

    streamed = asyncio.run(ask(app, "POST", "/v1/completions", content=chunks(), headers=headers))  # no length
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "request_too_large"
    assert seen == []  # no replica was asked
    odd = asyncio.run(ask(app, "TRACE", "/v1/chat/completions", headers=headers))
    assert odd.status_code == 405 and odd.json()["error"]["code"] == "method_not_allowed"
    assert odd.headers["x-content-type-options"] == "nosniff"
    metrics = asyncio.run(ask(app, "GET", "/metrics", headers=headers))  # the replica has no /metrics: 503
    assert metrics.status_code == 503 and metrics.json()["error"]["code"] == "replica_unavailable"


def test_the_front_passes_a_request_with_its_points_and_counts_only_its_own_refusals() -> None:
    app, seen = front_over(bridge_app([]))
    answered = asyncio.run(ask(app, "POST", "/echo?x=1", json={"messages": [{"role": "user", "content": "hi"}]}))
    assert answered.status_code == 201 and answered.json()["query"] == "x=1"
    (wire,) = seen
    assert wire.points and wire.points[-1].strong
    assert answered.headers.get_list("x-content-type-options") == ["nosniff"]  # once, not once per hop


def test_the_fronts_metrics_hold_each_replicas_series_and_the_fronts_own_refusals() -> None:
    from starlette.responses import PlainTextResponse

    async def metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(replica_text(3, 1))

    app, seen = front_over(Starlette(routes=[Route("/metrics", metrics)]), api_key="k")
    asyncio.run(ask(app, "POST", "/v1/completions", json={"prompt": "hi"}))  # 401, at the front
    text = asyncio.run(ask(app, "GET", "/metrics", headers={"Authorization": "Bearer k"})).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text)
               for s in f.samples}  # fmt: skip
    assert samples[("llama_isolate_tokens_generated_total", ((REPLICA_LABEL, "r1"),))] == 3.0
    refused = (("endpoint", "/v1/completions"), (REPLICA_LABEL, "front"), ("status", "401"))
    assert samples[("llama_isolate_requests_total", refused)] == 1.0
    assert [wire.replica for wire in seen] == ["r1"]  # asked of that replica alone


def test_a_request_whose_client_leaves_before_its_answer_is_counted_as_gone_not_failed() -> None:
    from llama_isolate.server.middleware import RequestCounter

    counted: list[tuple[str, int]] = []

    async def slow(request: Request) -> JSONResponse:
        await asyncio.sleep(30)
        return JSONResponse({})

    inner = RequestCounter(
        Starlette(routes=[Route("/v1/completions", slow, methods=["POST"])]),
        count=lambda path, status: counted.append((path, status)),
        endpoints={"/v1/completions"},
    )

    async def run() -> None:
        answer = serve_asgi(inner, forwarded("POST", "/v1/completions", b"{}"))
        waiting = asyncio.ensure_future(answer.__anext__())
        await asyncio.sleep(0.1)
        waiting.cancel()  # Ray cancels the call: the client left before the first byte
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await answer.aclose()
        for _ in range(100):
            if counted:
                return
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert counted == [("/v1/completions", 499)]
