"""The model behind the server: one `LlamaParent`, started and stopped with the app, and its metrics."""

from __future__ import annotations

import logging
from pathlib import Path

from llama_isolate import ContextParams, LlamaLoad, LlamaParent, LlamaStatus, SamplerParams, default_model_path

from .convert import Turn
from .errors import ApiError
from .generation import Generation
from .metrics import Metrics

logger = logging.getLogger("llama_isolate.server")

DEFAULT_PARALLEL = 4


def default_load() -> LlamaLoad:
    """The embedded default model, 4 conversations at once, embeddings on."""
    return LlamaLoad(
        path=default_model_path(), context_params=ContextParams(n_parallel=DEFAULT_PARALLEL, embeddings=True)
    )


def model_name_of(load: LlamaLoad) -> str:
    """The name `/v1/models` shows by default: the model file's name without ``.gguf``."""
    name = Path(load.path).name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


class ModelService:
    """The parent (created in the app's lifespan, on the server's event loop) and what requests need of it."""

    def __init__(self, load: LlamaLoad, *, name: str, max_queue: int | None, init_timeout: float | None) -> None:
        self.load = load
        self.name = name
        self.metrics = Metrics()
        self._max_queue = max_queue
        self._init_timeout = init_timeout
        self._parent: LlamaParent | None = None

    async def start(self) -> None:
        parent = LlamaParent(self.load, max_queue=self._max_queue, restart_on_crash=True)
        await parent.init(timeout=self._init_timeout)
        self._parent = parent
        self.metrics.watch(parent)
        logger.info("model %s ready: %s", self.name, parent.model_info)

    async def stop(self) -> None:
        parent, self._parent = self._parent, None
        self.metrics.watch(None)
        if parent is not None:
            await parent.dispose()

    @property
    def status(self) -> LlamaStatus:
        return LlamaStatus.UNINITIALIZED if self._parent is None else self._parent.status

    def ready(self) -> LlamaParent:
        """The parent, or 503 while it loads, restarts after a crash, or is gone."""
        parent = self._parent
        if parent is None or parent.status not in (LlamaStatus.READY, LlamaStatus.GENERATING):
            state = "not started" if parent is None else parent.status.value
            raise ApiError(503, f"the model is not ready ({state}); try again shortly", code="model_not_ready")
        return parent

    @property
    def sampler_params(self) -> SamplerParams:
        return self.load.sampler_params

    async def generate(self, turn: Turn, sampler: SamplerParams, max_tokens: int | None, *, raw: bool) -> Generation:
        """Queue a prompt in a scope of its own (see `Generation`)."""
        parent = self.ready()
        self.metrics.in_flight += 1
        return await Generation.start(parent, turn, sampler, max_tokens, raw=raw, on_close=self._closed)

    def _closed(self, generation: Generation) -> None:
        self.metrics.in_flight -= 1
        if generation.event is not None:
            self.metrics.prompt_ended(generation.event)

    async def embed(self, text: str) -> list[float]:
        return await self.ready().get_embeddings(text, normalize=True)
