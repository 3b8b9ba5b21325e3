"""Prometheus metrics of one server, in a registry of its own (two apps in one process do not mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llama_isolate import CompletionEvent, LlamaParent

PREFIX = "llama_isolate"
_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Queue length, prompts running, tokens, time to first token, requests by endpoint and status.

    Example::

        metrics = Metrics()
        metrics.watch(parent)
        metrics.request("/v1/chat/completions", 200)
        text = metrics.exposition()
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.in_flight = 0  # prompts sent and not ended
        self.generating = 0  # of which have produced text
        self.embedding_requests = 0  # embeddings requests in flight
        self._parent: LlamaParent | None = None
        Gauge(f"{PREFIX}_queue_length", "Prompts waiting for a slot.", registry=self.registry).set_function(
            self._queued
        )
        Gauge(
            f"{PREFIX}_prompts_running", "Prompts reading their prompt or generating.", registry=self.registry
        ).set_function(lambda: max(0, self.in_flight - self._queued()))
        Gauge(
            f"{PREFIX}_prompts_generating",
            "Prompts past their first token (the others running still read their prompt).",
            registry=self.registry,
        ).set_function(lambda: self.generating)
        Gauge(
            f"{PREFIX}_embedding_requests",
            "Embeddings requests in flight (one text is embedded at a time; the others wait).",
            registry=self.registry,
        ).set_function(lambda: self.embedding_requests)
        self._generated = Counter(f"{PREFIX}_tokens_generated", "Tokens generated.", registry=self.registry)
        self._processed = Counter(
            f"{PREFIX}_prompt_tokens_processed",
            "Prompt tokens processed (not counting cached ones).",
            registry=self.registry,
        )
        self._cached = Counter(
            f"{PREFIX}_prompt_tokens_cached", "Prompt tokens reused from a KV cache.", registry=self.registry
        )
        self._ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "From a prompt's arrival to its first token.",
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self._requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests by endpoint and status (499: the client closed the connection).",
            ["endpoint", "status"],
            registry=self.registry,
        )

    def watch(self, parent: LlamaParent | None) -> None:
        """The parent whose queue is reported."""
        self._parent = parent

    def _queued(self) -> int:
        return 0 if self._parent is None else self._parent.queue_length

    def prompt_ended(self, event: CompletionEvent) -> None:
        self._generated.inc(event.completion_tokens)
        self._processed.inc(event.prompt_tokens)
        self._cached.inc(event.cached_tokens)
        if event.timings.first_token_s is not None:
            self._ttft.observe(event.timings.first_token_s)

    def request(self, endpoint: str, status: int) -> None:
        self._requests.labels(endpoint=endpoint, status=str(status)).inc()

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
