"""`PrefixAffinityRouter`: Ray Serve's request router for our model replicas, by cached prefix and load.

Serve runs one in every process that calls the model deployment through a
`DeploymentHandle` (the front of `llama_isolate.server.ray.build_app`). For
each request it asks `llama_isolate.server.affinity.rank` for an order of
the replicas, from what it knows without asking any of them:

- the points each replica reported (its `record_routing_stats`, polled by
  Serve's controller about once a second and passed to every router);
- the points of the requests this router sent since (a replica's report may
  be a second old when the next turn comes): for the replica it put first
  while a request runs, for the replica that answered once it ended;
- requests in flight: those this router gave the replica and that have not
  ended, or what Serve last heard from the replica if that is more;
- the replica's slots (reported).

Serve then sends the request to the first replica in that order that has
room (`max_ongoing_requests`). A request addressed to one replica (the
front's ``/metrics``) goes to that replica only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from .affinity import Point, ReplicaView, rank
from .ray_front import register_router

__all__ = ["PrefixAffinityRouter"]

SENT_TTL_S = 10.0
"""How long a router remembers which replica it sent a conversation to: a few of the replicas' reports."""


class PrefixAffinityRouter(RequestRouter):  # type: ignore[misc]
    """Routes a request to the replica whose cache holds the longest prefix of its conversation (see the module)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._sent: dict[ReplicaID, dict[int, float]] = {}  # points this router sent, with when
        self._flying: dict[ReplicaID, int] = {}  # requests given a replica and not ended
        self._given: dict[str, _Given] = {}  # which, by the request's internal id
        self._held: dict[ReplicaID, tuple[int, frozenset[int]]] = {}  # a report's points, by the report's id
        # Serve sends this module to the cluster by value: what the front reads lives in a module it imports.
        register_router(self._deployment_id.app_name, self._deployment_id.name, self.replica_ids)

    def replica_ids(self) -> list[str]:
        """The replicas this router routes to now, by their unique ids."""
        return [replica.unique_id for replica in list(self._replica_id_set)]

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        for gone in set(self._sent) | set(self._flying) | set(self._held):
            if gone not in self._replica_id_set:
                self._sent.pop(gone, None)
                self._given = {request: to for request, to in self._given.items() if to.replica != gone}
                self._flying.pop(gone, None)
                self._held.pop(gone, None)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is None:
            return [candidate_replicas]
        pending_request.routing_context.should_backoff = True  # every replica was offered: wait before again
        wire = pending_request.args[0] if pending_request.args else None
        target = getattr(wire, "replica", None)
        if target is not None:
            return [[r for r in candidate_replicas if r.replica_id.unique_id == target]]
        points: Sequence[Point] = getattr(wire, "points", ())
        views = [self._view(replica) for replica in candidate_replicas]
        order = [candidate_replicas[at] for at in rank(points, views)]
        if order:  # Serve takes the first unless it is at max_ongoing_requests
            self._give(pending_request, order[0].replica_id, points)
        return [[replica] for replica in order]

    def _give(self, request: PendingRequest, replica_id: ReplicaID, points: Sequence[Point]) -> None:
        """Count a request in flight on the replica it goes to, at once (the next one is chosen before it is sent).

        A request cancelled before it was sent never ends on a replica: it is
        let go here, the next time a request is given.
        """
        for request_id, given in list(self._given.items()):
            if given.future.cancelled():
                self._let_go(request_id)
        self._let_go(request.metadata.internal_request_id)  # chosen again: its first choice refused it
        self._given[request.metadata.internal_request_id] = _Given(replica_id, points, request.future)
        self._flying[replica_id] = self._flying.get(replica_id, 0) + 1
        self._remember(replica_id, points)

    def _let_go(self, request_id: str) -> _Given | None:
        given = self._given.pop(request_id, None)
        if given is not None:
            self._flying[given.replica] = max(0, self._flying.get(given.replica, 0) - 1)
        return given

    def _remember(self, replica_id: ReplicaID, points: Sequence[Point]) -> None:
        if points:
            sent = self._sent.setdefault(replica_id, {})
            now = time.monotonic()
            for point in points:
                sent[point.key] = now

    def _view(self, replica: RunningReplica) -> ReplicaView:
        stats = replica.routing_stats or {}
        sent = self._sent.get(replica.replica_id, {})
        now = time.monotonic()
        for key in [key for key, at in sent.items() if now - at > SENT_TTL_S]:
            del sent[key]
        held = _Held(self._reported(replica.replica_id, stats), sent)
        flying = self._flying.get(replica.replica_id, 0)
        heard = self._replica_queue_len_cache.get(replica.replica_id)
        slots = stats.get("slots")
        return ReplicaView(
            held=held,
            in_flight=max(flying, heard or 0),
            slots=slots if isinstance(slots, int) and slots > 0 else None,
        )

    def _reported(self, replica_id: ReplicaID, stats: dict[str, Any]) -> frozenset[int]:
        """The points of a replica's last report, made a set once per report."""
        report = stats.get("report", 0)
        known = self._held.get(replica_id)
        if known is None or known[0] != report:
            points = stats.get("points", ())
            known = (report, frozenset(points) if isinstance(points, list | tuple) else frozenset())
            self._held[replica_id] = known
        return known[1]

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        given = self._let_go(internal_request_id)
        if given is None:
            return
        if given.replica != replica_id:  # Serve sent it to a later choice (the first was busy, or slow to a probe)
            sent = self._sent.get(given.replica, {})
            for point in given.points:
                sent.pop(point.key, None)
        if replica_id in self._replica_id_set:
            self._remember(replica_id, given.points)  # where it was answered: the next turn's place


@dataclass(frozen=True)
class _Given:
    """A request this router gave a replica: which, its points, and its pending future (cancelled: never sent)."""

    replica: ReplicaID
    points: Sequence[Point]
    future: asyncio.Future[Any]


@dataclass(frozen=True)
class _Held(Collection[int]):
    """The points a replica holds as this router sees them: its last report, and what was sent to it since."""

    reported: frozenset[int]
    sent: dict[int, float]

    def __contains__(self, key: object) -> bool:
        return key in self.reported or key in self.sent

    def __len__(self) -> int:
        return len(self.reported) + len(self.sent)

    def __iter__(self) -> Iterator[int]:
        yield from self.reported
        yield from (key for key in self.sent if key not in self.reported)
