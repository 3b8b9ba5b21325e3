"""`create_app`: the ASGI app of `llama-isolate serve`, for mounting in your own service too."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from llama_isolate import LlamaLoad

from . import errors
from .middleware import (
    DEFAULT_BODY_TIMEOUT_S,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    ClosedConnectionGuard,
    HostCheckMiddleware,
    RequestCounter,
    SecurityHeadersMiddleware,
)
from .pool import ModelPool, ServedModel
from .routes import router
from .service import default_load, model_name_of

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_QUEUE = 256
DEFAULT_MAX_BODY_BYTES = 32 * 2**20  # room for a few images as data: URIs
COUNTED = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"}


def add_checks(
    app: FastAPI,
    *,
    api_key: str | None,
    cors_origins: Sequence[str],
    max_body_bytes: int,
    body_timeout: float,
    allowed_hosts: Sequence[str] | None,
    count: Callable[[str, int], None],
    uncounted: Callable[[Scope], bool] | None = None,
) -> None:
    """The checks every request of the server passes before its route, as middleware (see `create_app`'s options).

    `count` is told each answer of the `COUNTED` endpoints (401 and 413 too),
    but those `uncounted` names. The Ray front (`ray_front`) checks with the
    same stack before it asks a replica.
    """
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes, timeout=body_timeout)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, key=api_key)
    app.add_middleware(RequestCounter, count=count, endpoints=COUNTED, unless=uncounted)
    if allowed_hosts is not None:
        app.add_middleware(HostCheckMiddleware, allowed=list(allowed_hosts))
    app.add_middleware(SecurityHeadersMiddleware)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],  # the openai JS SDK sends X-Stainless-* headers
        )
    app.add_middleware(ClosedConnectionGuard)  # outermost: it wraps the server's own send


def create_app(
    load: LlamaLoad | None = None,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    max_queue: int | None = DEFAULT_MAX_QUEUE,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    init_timeout: float | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S,
    replicas: int = 1,
    models: Sequence[ServedModel] = (),
    trim_history: bool = False,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """An OpenAI-compatible ASGI app serving models; they load when the app starts (its lifespan).

    Args:
        load: the model (default: the embedded SmolLM2-135M-Instruct, 4
            conversations at once, embeddings on). Give it
            ``ContextParams(embeddings=True)`` for ``/v1/embeddings``.
        model_name: the id `/v1/models` shows (default: the file name without
            ``.gguf``). Requests may name any model: there is only this one.
        replicas: copies of that model, each a worker of its own (see docs/scaling.md).
        models: several models instead of `load`, `model_name` and `replicas`
            (`ServedModel(name, load, replicas)`); a request's ``model`` picks
            one, and an unknown name gets 404.
        api_key: when set, every endpoint but ``/health`` and the chat page
            needs ``Authorization: Bearer <api_key>``.
        cors_origins: origins allowed to call the API from a browser (none by default).
        max_queue: prompts that may wait for a slot; more get 429 (None: no limit).
        max_body_bytes: larger request bodies get 413.
        body_timeout: seconds a request's body may take to arrive; a slower one gets 408.
        init_timeout: how long the model may take to load (default: `default_init_timeout`).
        trim_history: a chat over the model's context loses its oldest turns
            (``usage.dropped_messages`` says how many) instead of getting 400
            ``context_length_exceeded``, as OpenAI answers and as is the default.
            A request's own ``trim_history`` field overrides it.
        allowed_hosts: when given, a request whose ``Host`` header is a name
            none of these patterns (``*.example.com``; ``*`` for any) matches
            gets 403; addresses always pass. `serve` bound to a loopback
            address passes ``LOOPBACK_HOSTS`` plus its ``--allowed-host``s,
            against DNS rebinding (see docs/server.md). None: no check.

    Mounted inside another app, the model loads with the host's lifespan,
    which Starlette does not do for mounted apps by itself: pass the inner
    app's ``router.lifespan_context`` (see docs/server.md).

    Example::

        import uvicorn
        from llama_isolate.server import create_app

        uvicorn.run(create_app(), host="127.0.0.1", port=8080)

        # or under a prefix of your own service:
        llm = create_app()
        host = FastAPI(lifespan=llm.router.lifespan_context)
        host.mount("/llm", llm)
    """
    if api_key is not None and (not api_key.isascii() or not api_key.isprintable() or " " in api_key):
        raise ValueError("the API key must be printable ASCII without spaces (it travels in an HTTP header)")
    if models and (load is not None or model_name is not None or replicas != 1):
        raise ValueError("give either models, or load / model_name / replicas, not both")
    if not models:
        load = load or default_load()
        models = [ServedModel(model_name or model_name_of(load), load, replicas)]
    pool = ModelPool(models, max_queue=max_queue, init_timeout=init_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        try:
            yield
        finally:
            await pool.stop()

    app = FastAPI(title="llama-isolate", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool = pool
    app.state.trim_history = bool(trim_history)
    errors.install(app)
    app.include_router(router)
    if STATIC.is_dir():
        if not (STATIC / "vendor" / "markdown-it.js").exists():
            logger.warning(
                "the chat page shows answers as plain text: its markdown renderer is missing (python web/build.py)"
            )
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        async def page() -> FileResponse:
            return FileResponse(STATIC / "index.html")

    add_checks(
        app,
        api_key=api_key,
        cors_origins=cors_origins,
        max_body_bytes=max_body_bytes,
        body_timeout=body_timeout,
        allowed_hosts=allowed_hosts,
        count=pool.metrics.request,
    )
    return app
