"""The served models, each with its replicas, and which replica a request goes to.

Within one model a request goes, in this order, to:
1. the replica whose caches hold the longest prefix of its conversation
   (`LlamaParent.cached_tokens`, asked of every ready replica at once), when
   it holds at least `AFFINITY_TOKENS` more than the others: the next turn of
   a chat lands where the previous one left its KV cache, while a prefix
   every replica has, or nearly (a chat template's opening, a short system
   prompt), does not pull every new conversation to one replica;
2. else the replica with the fewest outstanding tokens (the `max_tokens` of
   the prompts it has in flight).

A replica whose worker is down (crashed, restarting) gets no new requests
while another is ready; its own requests fail with 503, safe to retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llama_isolate import LlamaLoad

from .errors import ApiError
from .metrics import ServerMetrics
from .service import ModelService

AFFINITY_TOKENS = 64  # a replica's cache must hold this many more tokens of a conversation to draw it
PROBE_TIMEOUT_S = 0.5  # a replica that does not answer the cache question in time counts as holding nothing


@dataclass(frozen=True)
class ServedModel:
    """One model the server serves: its name in requests and `/v1/models`, what to load, and how many copies.

    Example::

        ServedModel("chat", LlamaLoad(path="chat.gguf"), replicas=2)
    """

    name: str
    load: LlamaLoad
    replicas: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not self.name.isprintable():
            raise ValueError(f"a served model needs a printable, non-empty name, got {self.name!r}")
        if not isinstance(self.replicas, int) or isinstance(self.replicas, bool) or not 1 <= self.replicas <= 64:
            raise ValueError(f"model {self.name!r}: replicas must be an int from 1 to 64, got {self.replicas!r}")


class ModelPool:
    """Every replica of every served model, and the routing between them."""

    def __init__(self, models: Sequence[ServedModel], *, max_queue: int | None, init_timeout: float | None) -> None:
        if not models:
            raise ValueError("the server needs at least one model")
        names = [model.name for model in models]
        if len(set(names)) != len(names):
            raise ValueError(f"two served models have the same name: {names}")
        self.metrics = ServerMetrics()
        self.models: dict[str, list[ModelService]] = {
            model.name: [
                ModelService(
                    model.load,
                    name=model.name,
                    metrics=self.metrics.replica(model.name, index),
                    max_queue=max_queue,
                    init_timeout=init_timeout,
                    replica=index,
                )
                for index in range(model.replicas)
            ]
            for model in models
        }

    @property
    def services(self) -> list[ModelService]:
        return [service for replicas in self.models.values() for service in replicas]

    async def start(self) -> None:
        """Load every replica (together); if one fails, the ones started are stopped again."""
        started = await asyncio.gather(*(service.start() for service in self.services), return_exceptions=True)
        failures = [result for result in started if isinstance(result, BaseException)]
        if failures:
            await self.stop()
            raise failures[0]

    async def stop(self) -> None:
        await asyncio.gather(*(service.stop() for service in self.services))

    def begin_shutdown(self) -> None:
        for service in self.services:
            service.begin_shutdown()

    def replicas(self, name: str | None) -> list[ModelService]:
        """The replicas of the model a request names; with one model, any name (as llama-server); else 404."""
        if len(self.models) == 1:
            return next(iter(self.models.values()))
        replicas = self.models.get(name or "")
        if replicas is None:
            known = ", ".join(sorted(self.models))
            asked = repr(name) if name is None or len(name) <= 80 else f"{name[:80]!r}... ({len(name)} characters)"
            raise ApiError(
                404, f"no model named {asked}; this server has: {known}", param="model", code="model_not_found"
            )
        return replicas

    def first(self, name: str | None) -> ModelService:
        """A replica of the model, for what does not depend on which (its name, its load)."""
        return self.replicas(name)[0]

    async def route(self, name: str | None, messages: list[dict[str, Any]] | None = None) -> ModelService:
        """The replica a request goes to (see the module's docstring); `messages` is its conversation, if any."""
        replicas = self.replicas(name)
        ready = [r for r in replicas if r.status.is_ready] or replicas
        if len(ready) == 1:
            return ready[0]
        if messages:
            held = await asyncio.gather(*(_cached(replica, messages) for replica in ready))
            ranked = sorted(zip(held, range(len(ready)), strict=True), reverse=True)
            (best, at), (second, _) = ranked[0], ranked[1]
            if best - second >= AFFINITY_TOKENS:
                return ready[at]
        return min(ready, key=lambda r: (r.metrics.outstanding_tokens, r.metrics.in_flight, r.replica))


async def _cached(replica: ModelService, messages: list[dict[str, Any]]) -> int:
    try:
        return await asyncio.wait_for(replica.cached_tokens(messages), PROBE_TIMEOUT_S)
    except TimeoutError:
        return 0
