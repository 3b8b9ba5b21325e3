"""The pieces between Ray Serve's front and a model replica, without a cluster: the ASGI bridge and /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

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
