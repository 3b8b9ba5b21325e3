"""Which Serve replica a request goes to: the one whose caches hold the longest prefix of its conversation.

The policy behind `llama_isolate.server.ray_router.PrefixAffinityRouter`,
kept free of Ray so that `bench ray` replays this very code against a model
of 32 replicas.

A request's conversation is cut into *points*: a chained hash of its text at
every `BLOCK_CHARS` characters and at the end of every message, so that the
points of a turn are also points of every later turn of the same
conversation (its messages come first, unchanged). Each replica keeps the
points of the requests it served most recently (`PrefixLedger`), reports
them to the routers (Serve's routing stats, once a second), and each router
adds the points of what it routed itself since.

`rank` orders the replicas for one request:

1. replicas holding a *strong* point of the conversation (past its first
   user message; for a plain prompt, `STRONG_CHARS` into it), the deepest
   match first, fewest requests in flight first among equals: the next turn
   goes where the previous one left its KV;
2. every other replica after them, fewest requests in flight first; a tie
   goes to the replica that holds the fewest points (the fewest
   conversations), then to the one with the longer weak match (a shared
   system prompt). A new conversation therefore goes to the least loaded
   replica, and new conversations that come one at a time are spread;
3. a *full* replica goes after every replica that is not, whatever it
   holds: load still counts. Full is `FULL_FACTOR` times its slots in
   flight (each slot busy, and as many waiting): a turn that waits for one
   answer to finish costs less than reading its whole history again
   elsewhere, and a replica with more than that waiting is worth leaving.

Nothing here is a round trip to a replica: the view is what replicas last
reported plus what this router sent since. Replicas that come or go move
only the conversations they held: nothing is hashed onto a ring.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BLOCK_CHARS", "STRONG_CHARS", "Point", "PrefixLedger", "ReplicaView", "conversation_points", "rank"]

BLOCK_CHARS = 256
"""A point every this many characters of a conversation's text (and at every message's end)."""
STRONG_CHARS = 256
"""A plain prompt's match is strong from this many characters: a shorter one is likely a shared opening."""
MAX_POINTS = 4096
"""Points of one request at most (about a megabyte of text): deeper text does not change the choice."""
FULL_FACTOR = 2
"""A replica with this many times its slots in flight is full: the next best replica is tried first."""
LEDGER_POINTS = 8192
"""Points a replica reports at most: those of the requests it served most recently."""


@dataclass(frozen=True)
class Point:
    """One place in a conversation: the hash of its text so far, how deep that is, and whether it is strong."""

    key: int
    depth: int
    strong: bool


def conversation_points(body: Any) -> tuple[Point, ...]:
    """The points of a request body (`/v1/chat/completions` or `/v1/completions`); () for anything else.

    Never raises: a body the server will refuse simply has no points, and goes
    to the least loaded replica, which answers the error.
    """
    if not isinstance(body, Mapping):
        return ()
    model = body.get("model")
    chain = _Chain(model if isinstance(model, str) else "")
    messages, prompt = body.get("messages"), body.get("prompt")
    if isinstance(messages, list):
        opened = False  # strong from the end of the first message that is not a system one
        for message in messages:
            if not isinstance(message, Mapping):
                return chain.points
            role = message.get("role")
            chain.add(f"\x1e{role if isinstance(role, str) else ''}\x1f{_text_of(message.get('content'))}")
            opened = opened or role not in ("system", "developer")
            chain.mark(strong=opened)
    elif isinstance(prompt, str):
        chain.add(prompt, strong_from=STRONG_CHARS)
    return chain.points


def _text_of(content: Any) -> str:
    """A message's content as one text (text parts, and image parts by their URL); what else it is, as its repr."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\x1d".join(_part_text(part) for part in content)
    return repr(content) if content is not None else ""


def _part_text(part: Any) -> str:
    if not isinstance(part, Mapping):
        return repr(part)
    if isinstance(part.get("text"), str):
        return str(part["text"])
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    return f"\x1c{url}" if isinstance(url, str) else repr(part)


class _Chain:
    """A running hash of a conversation's text, with a point every `BLOCK_CHARS` characters and where marked."""

    def __init__(self, model: str) -> None:
        self._hash = hashlib.blake2b(model.encode("utf-8", "replace"), digest_size=8)
        self._depth = 0
        self._strong = False
        self._points: list[Point] = []

    @property
    def points(self) -> tuple[Point, ...]:
        return tuple(self._points)

    def add(self, text: str, *, strong_from: int | None = None) -> None:
        at = 0
        while at < len(text) and len(self._points) < MAX_POINTS:
            step = min(len(text) - at, BLOCK_CHARS - self._depth % BLOCK_CHARS)
            self._hash.update(text[at : at + step].encode("utf-8", "surrogatepass"))
            at += step
            self._depth += step
            if strong_from is not None and self._depth >= strong_from:
                self._strong = True
            if self._depth % BLOCK_CHARS == 0 or at == len(text):
                self._point()

    def mark(self, *, strong: bool) -> None:
        """The end of a message: a point there (if the text did not just make one), strong from here on if asked."""
        self._strong = self._strong or strong
        if self._points and self._points[-1].depth == self._depth:
            self._points[-1] = Point(self._points[-1].key, self._depth, self._strong)
        else:
            self._point()

    def _point(self) -> None:
        if len(self._points) < MAX_POINTS:
            self._points.append(Point(int.from_bytes(self._hash.copy().digest(), "big"), self._depth, self._strong))


class PrefixLedger:
    """The points of the requests a replica served most recently, what it reports to the routers.

    A replica's KV (its slots and the caches it parks in RAM) holds what it
    served last; the ledger is that order, cut at `capacity` points. It is a
    guide, not a promise: a guess that is wrong costs the request its cache,
    never its answer.
    """

    def __init__(self, capacity: int = LEDGER_POINTS) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[int, None] = OrderedDict()

    def record(self, points: Iterable[Point]) -> None:
        for point in points:
            self._keys[point.key] = None
            self._keys.move_to_end(point.key)
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)

    def clear(self) -> None:
        self._keys.clear()

    def keys(self) -> list[int]:
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[int]:
        return iter(self._keys)


@dataclass
class ReplicaView:
    """What a router knows of one replica: the points it holds, its requests in flight, and its slots."""

    held: Collection[int] = field(default_factory=set)
    in_flight: int = 0
    slots: int | None = None  # None: not reported yet, never counted full

    @property
    def full(self) -> bool:
        return self.slots is not None and self.in_flight >= FULL_FACTOR * self.slots

    def match(self, points: Sequence[Point]) -> Point | None:
        """The deepest of `points` this replica holds."""
        for point in reversed(points):
            if point.key in self.held:
                return point
        return None


def rank(points: Sequence[Point], views: Sequence[ReplicaView]) -> list[int]:
    """The indexes of `views` in the order a request with `points` should try them (see the module's docstring)."""
    matches = [view.match(points) for view in views]
    strong = [match.depth if match is not None and match.strong else 0 for match in matches]
    weak = [match.depth if match is not None else 0 for match in matches]

    def order(at: int) -> tuple[bool, int, int, int, int, int]:
        view = views[at]
        return (view.full, -strong[at], view.in_flight, len(view.held), -weak[at], at)

    return sorted(range(len(views)), key=order)
