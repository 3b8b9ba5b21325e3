"""The front of the Ray Serve application: reads each request, and passes it to a model replica by its cache.

Serve's HTTP proxy cannot read a request's body before it picks a replica,
so the application has two deployments: this front, which the proxy calls,
and the model replicas (`llama_isolate.server.ray_replica.ModelReplica`),
which the front calls through a `DeploymentHandle` with the request and its
conversation's points, where `PrefixAffinityRouter` sees them.

The front answers by itself only:

- ``/metrics``: every replica's series, each with a ``serve_replica`` label
  (the replica's unique id), gathered when scraped; 503 if no replica
  answered;
- a request no replica could take (the replica died before answering): 503 in
  OpenAI's JSON, safe to retry. A stream cut short by a replica's death ends
  with an error event and ``data: [DONE]``, as a worker's crash does;
- a request the server's own checks refuse before reading it: the Host
  (``allowed_hosts``), the API key, the body's size and time, with the
  server's middleware and in OpenAI's JSON; a replica checks them again.
  Those refusals are counted in ``/metrics`` as ``llama_isolate_requests_total``
  with ``serve_replica="front"``; the replicas count the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from ray.exceptions import ActorUnavailableError, RayActorError
from starlette.requests import ClientDisconnect

from . import errors
from .affinity import conversation_points
from .app import add_checks
from .errors import CLIENT_GONE_STATUS, ApiError
from .ray_replica import Forwarded, Start

__all__ = ["FRONT_LABEL", "REPLICA_LABEL", "front_app", "merge_expositions", "register_router", "replicas_of"]

logger = logging.getLogger(__name__)

REPLICA_LABEL = "serve_replica"
"""The label the front's ``/metrics`` gives each replica's series: the replica's unique id."""
FRONT_LABEL = "front"
"""The `REPLICA_LABEL` of the series the front counts itself: the requests it refused."""
FORWARDED_KEY = "llama_isolate.forwarded"
"""Set in a request's scope once the front passed it to a replica (which counts it)."""
SCRAPE_TIMEOUT_S = 5.0
"""How long ``/metrics`` waits for a replica's figures; one that is slower is left out of that scrape."""
PARSE_IN_THREAD_BYTES = 64 * 1024
"""A larger body is parsed for its points off the front's event loop."""
ATTEMPTS = 2
"""Replicas a request is offered to when the first died before answering."""
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]

Call = Callable[[Forwarded], Any]  # the model deployment's `http`, as a streaming handle call

_ROUTERS: dict[tuple[str, str], Callable[[], list[str]]] = {}
_ROUTERS_LOCK = threading.Lock()


def register_router(app: str, deployment: str, replica_ids: Callable[[], list[str]]) -> None:
    """A router of this process for `deployment` of `app` says how to ask it for the replicas it routes to.

    The last one made is the one asked (Serve makes one per deployment and process).
    """
    with _ROUTERS_LOCK:
        _ROUTERS[(app, deployment)] = replica_ids


def replicas_of(app: str, deployment: str) -> list[str] | None:
    """The unique ids of the replicas this process's router for `deployment` of `app` routes to; None: no router."""
    with _ROUTERS_LOCK:
        replica_ids = _ROUTERS.get((app, deployment))
    return replica_ids() if replica_ids is not None else None


def front_app(
    call: Callable[[], Call],
    replicas: Callable[[], list[str] | None],
    *,
    api_key: str | None,
    max_body_bytes: int,
    body_timeout: float,
    allowed_hosts: Sequence[str] | None,
    cors_origins: Sequence[str],
) -> FastAPI:
    """The front's ASGI app; `call()` gives the streaming handle's ``http.remote``, `replicas()` the replica ids.

    `api_key`, `max_body_bytes`, `body_timeout`, `allowed_hosts` and
    `cors_origins` are `create_app`'s, checked here by the same middleware
    (`add_checks`).
    """
    app = FastAPI(title="llama-isolate front", docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(app)
    registry = CollectorRegistry()
    refused = Counter(
        "llama_isolate_requests",
        "HTTP requests by endpoint and status (499: the client closed the connection).",
        ["endpoint", "status"],
        registry=registry,
    )

    def count(endpoint: str, status: int) -> None:
        refused.labels(endpoint=endpoint, status=str(status)).inc()

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        return await _gather_metrics(call(), replicas, request, generate_latest(registry).decode())

    @app.api_route("/{path:path}", methods=METHODS, include_in_schema=False)
    async def forward(request: Request) -> Response:
        try:
            body = await request.body()  # bounded by BodyLimitMiddleware
        except ClientDisconnect:  # the client left, or BodyLimitMiddleware answered 413 or 408 itself
            return Response(status_code=CLIENT_GONE_STATUS)
        points = await _points(request.method, body)
        wire = Forwarded(
            method=request.method,
            path=request.scope["path"],
            query=request.scope.get("query_string", b""),
            headers=tuple(request.scope["headers"]),
            body=body,
            client=tuple(request.scope["client"]) if request.scope.get("client") else None,
            points=points,
        )
        request.scope[FORWARDED_KEY] = True
        return await _answer(call(), wire)

    add_checks(
        app,
        api_key=api_key,
        cors_origins=cors_origins,
        max_body_bytes=max_body_bytes,
        body_timeout=body_timeout,
        allowed_hosts=allowed_hosts,
        count=count,
        uncounted=lambda scope: bool(scope.get(FORWARDED_KEY)),
    )
    return app


async def _points(method: str, body: bytes) -> tuple[Any, ...]:
    if method != "POST" or not body:
        return ()
    if len(body) > PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(_points_of, body)
    return _points_of(body)


def _points_of(body: bytes) -> tuple[Any, ...]:
    try:
        return conversation_points(json.loads(body))
    except (ValueError, RecursionError):
        return ()  # the replica answers the error


async def _answer(call: Call, request: Forwarded) -> Response:
    """A response streaming what a replica answers; 503 when none could answer at all.

    A replica that died before it answered anything is tried again once (its
    router no longer offers it): nothing of the request reached the client.
    """
    for attempt in range(1, ATTEMPTS + 1):
        stream = call(request)
        try:
            start = await stream.__anext__()
            break
        except StopAsyncIteration:
            return _unavailable("the replica ended the request without an answer")
        except Exception as exc:  # Ray's errors for a replica that died have no common type
            stream.cancel()
            if attempt < ATTEMPTS and isinstance(exc, RayActorError | ActorUnavailableError):
                logger.warning("a replica died before it answered; trying another: %s", exc)
                continue
            logger.warning("a replica could not take a request: %s", exc)
            return _unavailable(f"the replica serving this request stopped ({type(exc).__name__})")
    assert isinstance(start, Start)
    events = any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in start.headers)
    response = StreamingResponse(_rest(stream, events), status_code=start.status)
    response.raw_headers = list(start.headers)
    return response


async def _rest(stream: Any, events: bool) -> AsyncIterator[bytes]:
    ended = False
    try:
        async for chunk in stream:
            yield chunk
        ended = True
    except Exception as exc:
        ended = True
        logger.warning("a replica stopped in the middle of an answer: %s", exc)
        if events:
            error = ApiError(503, f"the replica serving this request stopped ({type(exc).__name__})")
            yield b"data: " + json.dumps(error.body()).encode() + b"\n\ndata: [DONE]\n\n"
    finally:
        if not ended:
            stream.cancel()  # the client left: the replica's call is cancelled, and with it the prompt


def _unavailable(message: str) -> Response:
    error = ApiError(503, f"{message}; safe to retry", code="replica_unavailable")
    return error.response()


async def _gather_metrics(
    call: Call, replicas: Callable[[], list[str] | None], request: Request, front: str
) -> Response:
    """Every replica's /metrics and the front's own (`front`), merged with a `REPLICA_LABEL` each."""
    headers = tuple(request.scope["headers"])
    ids = replicas()
    if ids is None:  # no router in this process yet: one untargeted call makes it
        await _read(call(Forwarded("GET", "/metrics", b"", headers, b"")))
        ids = replicas() or []
    # One after another: Serve gives the calls one request's id, and its router would mix up calls made at once.
    texts = [await _read(call(Forwarded("GET", "/metrics", b"", headers, b"", replica=replica))) for replica in ids]
    answered = {replica: text for replica, text in zip(ids, texts, strict=True) if text is not None}
    if not answered:
        return ApiError(503, f"no replica answered /metrics (of {len(ids)})", code="replica_unavailable").response()
    merged = merge_expositions({FRONT_LABEL: front, **answered})
    return Response(merged, media_type="text/plain; version=0.0.4; charset=utf-8")


async def _read(stream: Any) -> str | None:
    """A replica's whole answer when it is 200 within `SCRAPE_TIMEOUT_S`, else None."""

    async def whole() -> str | None:
        start = await stream.__anext__()
        body = b"".join([chunk async for chunk in stream])
        return body.decode() if isinstance(start, Start) and start.status == 200 else None

    try:
        return await asyncio.wait_for(whole(), SCRAPE_TIMEOUT_S)
    except Exception as exc:
        logger.info("a replica's /metrics did not come: %s", exc)
        stream.cancel()
        return None


class _Merged:
    """A prometheus_client collector of parsed families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def merge_expositions(texts: Mapping[str, str]) -> bytes:
    """Prometheus texts of several replicas as one, each series labelled with its replica (`REPLICA_LABEL`)."""
    families: dict[str, Metric] = {}
    for replica, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labels = {**sample.labels, REPLICA_LABEL: replica}
                merged.add_sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry)
