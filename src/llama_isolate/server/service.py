"""One replica of a served model: a `LlamaParent`, started and stopped with the app, and its metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llama_isolate import (
    ContextParams,
    Embedding,
    LlamaError,
    LlamaLoad,
    LlamaParent,
    LlamaStatus,
    PromptOptions,
    RestartPolicy,
    SamplerParams,
    default_model_path,
)

from .errors import ApiError
from .generation import Generation
from .metrics import Metrics

logger = logging.getLogger("llama_isolate.server")

DEFAULT_PARALLEL = 4
# A crashed worker is restarted at once, then 1 s, 2 s, ... up to 30 s apart while restarts fail, and never given
# up on: the server comes back when it can (a model file restored, memory freed) instead of answering 503 forever.
RESTARTS = RestartPolicy(max_attempts=None, backoff_s=1.0, max_backoff_s=30.0)


def default_load() -> LlamaLoad:
    """The embedded default model, 4 conversations at once, embeddings on."""
    context = ContextParams(n_parallel=DEFAULT_PARALLEL, embeddings=True)
    return LlamaLoad(path=default_model_path(), context_params=context)


def model_name_of(load: LlamaLoad) -> str:
    """The name `/v1/models` shows by default: the model file's name without ``.gguf``."""
    name = Path(load.path).name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


class ModelService:
    """The parent (created in the app's lifespan, on the server's event loop) and what requests need of it."""

    def __init__(
        self,
        load: LlamaLoad,
        *,
        name: str,
        metrics: Metrics,
        max_queue: int | None,
        init_timeout: float | None,
        replica: int = 0,
    ) -> None:
        self.load = load
        self.name = name
        self.replica = replica
        self.metrics = metrics
        self._max_queue = max_queue
        self._init_timeout = init_timeout
        self._parent: LlamaParent | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        parent = LlamaParent(self.load, max_queue=self._max_queue, restart_on_crash=RESTARTS)
        await parent.init(timeout=self._init_timeout)
        self._parent = parent
        self.metrics.watch(parent)
        logger.info("model %s (replica %d) ready: %s", self.name, self.replica, parent.model_info)

    async def stop(self) -> None:
        """Stop the worker; every request still pending ends (503, or an error event in its stream)."""
        parent, self._parent = self._parent, None
        self.metrics.watch(None)
        if parent is not None:
            await parent.dispose()

    def begin_shutdown(self) -> None:
        """The server was told to stop (SIGTERM): end the pending requests now, not after uvicorn's grace period."""
        if self._parent is not None:
            self._stopping = asyncio.get_running_loop().create_task(self.stop())

    @property
    def status(self) -> LlamaStatus:
        return LlamaStatus.UNINITIALIZED if self._parent is None else self._parent.status

    def ready(self) -> LlamaParent:
        """The parent, or 503 while it loads, restarts after a crash, or is gone."""
        parent = self._parent
        if parent is None or not parent.status.is_ready:
            state = "not started" if parent is None else parent.status.value
            raise ApiError(503, f"the model is not ready ({state}); try again shortly", code="model_not_ready")
        return parent

    @property
    def sampler_params(self) -> SamplerParams:
        return self.load.sampler_params

    @property
    def n_vocab(self) -> int:
        """The model's vocabulary size (503 while the model is not ready)."""
        info = self.ready().model_info
        assert info is not None
        return info.n_vocab

    async def generate(
        self, messages: list[dict[str, Any]], options: PromptOptions, *, param: str = "messages"
    ) -> Generation:
        """Queue the answer to `messages` (see `Generation`); `param` names the prompt's field in errors."""
        parent = self.ready()
        context = self.load.context_params
        budget = options.max_tokens or (
            context.n_predict if context.n_predict > 0 else context.n_ctx
        )  # tokens it may take
        self.metrics.in_flight += 1
        self.metrics.outstanding_tokens += budget

        def closed(generation: Generation) -> None:
            self.metrics.outstanding_tokens -= budget
            self._closed(generation)

        return await Generation.start(parent, messages, options, on_close=closed, on_first=self._first, param=param)

    def _first(self) -> None:
        self.metrics.generating += 1

    def _closed(self, generation: Generation) -> None:
        self.metrics.in_flight -= 1
        if generation.generating:
            self.metrics.generating -= 1
        if generation.event is not None:
            self.metrics.prompt_ended(generation.event)

    async def cached_tokens(self, messages: list[dict[str, Any]]) -> int:
        """How much of the prompt `messages` make this replica's caches hold (0 when it cannot say)."""
        parent = self._parent
        if parent is None or not parent.status.is_ready:
            return 0
        try:
            return await parent.cached_tokens(messages)
        except (LlamaError, ValueError):
            return 0

    async def embed(self, text: str) -> Embedding:
        return await self.ready().embed(text, normalize=True)

    @contextlib.contextmanager
    def embedding_turn(self) -> Iterator[None]:
        """Hold a place for one embeddings request; 429 when `max_queue` of them already wait behind one running."""
        if self._max_queue is not None and self.metrics.embedding_requests > self._max_queue:
            message = f"the server is busy: {self.metrics.embedding_requests} embeddings requests are in (--max-queue)"
            raise ApiError(429, message, code="queue_full")
        self.metrics.embedding_requests += 1
        try:
            yield
        finally:
            self.metrics.embedding_requests -= 1
