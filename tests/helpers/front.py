"""The Ray Serve front (`llama_isolate.server.ray_front`) over an app in this process, without a cluster.

`front_over(inner)` is the front's app whose "model deployment" is `inner`, reached through the same
`serve_asgi` bridge a model replica runs (needs Ray installed: the front imports its errors).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


class Stream:
    """What a streaming handle call gives the front: the bridge's items, and `cancel`."""

    def __init__(self, answer: AsyncIterator[Any]) -> None:
        self._answer = answer
        self.cancelled = False

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        return await self._answer.__anext__()

    def cancel(self) -> None:
        self.cancelled = True


def front_over(inner: Any, **options: Any) -> tuple[Any, list[Any]]:
    """The front's app over `inner` (one replica, "r1"), and the list of what it forwarded; `create_app`'s
    options as keywords (no key, 1000-byte bodies by default). The front runs `inner`'s lifespan."""
    from llama_isolate.server.ray_front import front_app
    from llama_isolate.server.ray_replica import Forwarded, serve_asgi

    seen: list[Forwarded] = []

    def call(wire: Forwarded) -> Stream:
        seen.append(wire)
        return Stream(serve_asgi(inner, wire))

    settings = {"api_key": None, "max_body_bytes": 1000, "body_timeout": 5.0, "allowed_hosts": None, "cors_origins": ()}
    app = front_app(lambda: call, lambda: ["r1"], **{**settings, **options})
    lifespan = getattr(getattr(inner, "router", None), "lifespan_context", None)
    if lifespan is not None:
        app.router.lifespan_context = lifespan
    return app, seen
