"""Prometheus metrics of one server, in a registry of its own (two apps in one process do not mix).

The unlabelled series are the server's totals over every replica of every
model. The ``llama_isolate_replica_*`` series carry ``model`` and
``replica`` labels: one per replica, so a crashed or busy one shows.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llama_isolate import CompletionEvent, LlamaParent

PREFIX = "llama_isolate"
_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_REPLICA = ["model", "replica"]


class ServerMetrics:
    """The server's totals, its requests by endpoint and status, and a `Metrics` per replica.

    Example::

        metrics = ServerMetrics()
        replica = metrics.replica("smollm2", 0)
        replica.watch(parent)
        metrics.request("/v1/chat/completions", 200)
        text = metrics.exposition()
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.replicas: list[Metrics] = []
        self._drafts = (0, 0)  # draft tokens checked, accepted
        self._prompts = (0, 0)  # prompt tokens cached, processed
        registry = self.registry

        def total(attribute: str) -> float:
            return float(sum(getattr(replica, attribute) for replica in self.replicas))

        Gauge(f"{PREFIX}_queue_length", "Prompts waiting for a slot.", registry=registry).set_function(
            lambda: total("queued")
        )
        Gauge(
            f"{PREFIX}_prompts_running", "Prompts reading their prompt or generating.", registry=registry
        ).set_function(lambda: total("running"))
        Gauge(
            f"{PREFIX}_prompts_generating",
            "Prompts past their first token (the others running still read their prompt).",
            registry=registry,
        ).set_function(lambda: total("generating"))
        Gauge(
            f"{PREFIX}_embedding_requests",
            "Embeddings requests in flight (one text is embedded at a time; the others wait).",
            registry=registry,
        ).set_function(lambda: total("embedding_requests"))
        self.generated = Counter(f"{PREFIX}_tokens_generated", "Tokens generated.", registry=registry)
        self.processed = Counter(
            f"{PREFIX}_prompt_tokens_processed",
            "Prompt tokens processed (not counting cached ones).",
            registry=registry,
        )
        self.cached = Counter(
            f"{PREFIX}_prompt_tokens_cached", "Prompt tokens reused from a KV cache.", registry=registry
        )
        Gauge(
            f"{PREFIX}_prompt_cached_share",
            "Prompt tokens reused from a KV cache / all prompt tokens, since the start (0 before any).",
            registry=registry,
        ).set_function(self._cached_share)
        self.drafted = Counter(
            f"{PREFIX}_draft_tokens",
            "Speculative decoding: guessed tokens the model checked.",
            registry=registry,
        )
        self.draft_accepted = Counter(
            f"{PREFIX}_draft_tokens_accepted",
            "Speculative decoding: guessed tokens the model agreed with (kept in replies).",
            registry=registry,
        )
        Gauge(
            f"{PREFIX}_draft_acceptance_rate",
            "Speculative decoding: accepted / checked guessed tokens since the start (0 before any).",
            registry=registry,
        ).set_function(self._acceptance)
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "From a prompt's arrival to its first token.",
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self._requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests by endpoint and status (499: the client closed the connection).",
            ["endpoint", "status"],
            registry=registry,
        )
        self.replica_up = Gauge(
            f"{PREFIX}_replica_up", "1 while the replica's worker is ready, else 0.", _REPLICA, registry=registry
        )
        self.replica_running = Gauge(
            f"{PREFIX}_replica_prompts_running", "The replica's prompts running.", _REPLICA, registry=registry
        )
        self.replica_queued = Gauge(
            f"{PREFIX}_replica_queue_length", "The replica's prompts waiting for a slot.", _REPLICA, registry=registry
        )
        self.replica_generated = Counter(
            f"{PREFIX}_replica_tokens_generated", "Tokens the replica generated.", _REPLICA, registry=registry
        )

    def drafts(self, drafted: int, accepted: int) -> None:
        """Count a prompt's speculative decoding."""
        self.drafted.inc(drafted)
        self.draft_accepted.inc(accepted)
        self._drafts = (self._drafts[0] + drafted, self._drafts[1] + accepted)

    def prompt_tokens(self, cached: int, processed: int) -> None:
        """Count a prompt's tokens: those its KV cache held, and those it read."""
        self.cached.inc(cached)
        self.processed.inc(processed)
        self._prompts = (self._prompts[0] + cached, self._prompts[1] + processed)

    def _cached_share(self) -> float:
        cached, processed = self._prompts
        return cached / (cached + processed) if cached + processed else 0.0

    def _acceptance(self) -> float:
        drafted, accepted = self._drafts
        return accepted / drafted if drafted else 0.0

    def replica(self, model: str, index: int) -> Metrics:
        """The figures of one more replica, in this registry."""
        metrics = Metrics(self, model, index)
        self.replicas.append(metrics)
        return metrics

    def request(self, endpoint: str, status: int) -> None:
        self._requests.labels(endpoint=endpoint, status=str(status)).inc()

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


class Metrics:
    """One replica's live figures (what its requests hold) and its share of the server's counters."""

    def __init__(self, server: ServerMetrics, model: str, index: int) -> None:
        self._server = server
        self.in_flight = 0  # prompts sent and not ended
        self.generating = 0  # of which have produced text
        self.embedding_requests = 0  # embeddings requests in flight
        self.outstanding_tokens = 0  # the max_tokens of the prompts in flight (what routing balances)
        self._parent: LlamaParent | None = None
        labels = {"model": model, "replica": str(index)}
        server.replica_up.labels(**labels).set_function(lambda: float(self.up))
        server.replica_running.labels(**labels).set_function(lambda: float(self.running))
        server.replica_queued.labels(**labels).set_function(lambda: float(self.queued))
        self._generated = server.replica_generated.labels(**labels)

    def watch(self, parent: LlamaParent | None) -> None:
        """The parent whose queue and status are reported."""
        self._parent = parent

    @property
    def queued(self) -> int:
        return 0 if self._parent is None else self._parent.queue_length

    @property
    def running(self) -> int:
        return max(0, self.in_flight - self.queued)

    @property
    def up(self) -> bool:
        return self._parent is not None and self._parent.status.is_ready

    def prompt_ended(self, event: CompletionEvent) -> None:
        server = self._server
        server.generated.inc(event.completion_tokens)
        self._generated.inc(event.completion_tokens)
        server.prompt_tokens(event.cached_tokens, event.prompt_tokens)
        server.drafts(event.timings.draft_tokens, event.timings.draft_accepted)
        if event.timings.first_token_s is not None:
            server.ttft.observe(event.timings.first_token_s)
