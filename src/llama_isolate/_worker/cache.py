"""Conversation caches: which KV each slot holds, and the states parked in RAM.

A slot is one llama.cpp sequence. After a prompt ends, its slot keeps the
conversation's KV cache (owner + tokens), so the conversation's next turn only
processes the tokens it adds. When another conversation needs the slot, the
owner's sequence state is copied out (`seqstate.capture`) into `HostCache`
(bounded by `ContextParams.cache_ram_mib`), and copied back in when that
conversation returns: a memcpy instead of processing its whole history again.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ParkedState:
    """A sequence's KV state outside the context, as llama.cpp wrote it, with the tokens it holds.

    `seq_id` is the sequence it was read from; `window` the length of its
    last part that is a sliding-window cache (0 when the model has none).
    """

    tokens: tuple[int, ...]
    data: bytes
    seq_id: int = 0
    window: int = 0


@dataclass(eq=False)
class Slot:
    """One sequence id and the conversation whose KV it holds."""

    seq_id: int
    owner: str | None = None
    tokens: list[int] = field(default_factory=list)
    last_used: int = 0


class HostCache:
    """Parked sequence states, least recently used dropped first beyond `budget` bytes."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._used = 0
        self._states: collections.OrderedDict[str, ParkedState] = collections.OrderedDict()

    def put(self, owner: str, state: ParkedState) -> None:
        self.pop(owner)
        if len(state.data) > self._budget:
            return
        self._states[owner] = state
        self._used += len(state.data)
        while self._used > self._budget:
            _, dropped = self._states.popitem(last=False)
            self._used -= len(dropped.data)

    def pop(self, owner: str) -> ParkedState | None:
        state = self._states.pop(owner, None)
        if state is not None:
            self._used -= len(state.data)
        return state

    def has(self, owner: str) -> bool:
        return owner in self._states

    def items(self) -> list[tuple[str, ParkedState]]:
        """Every parked state, least recently parked first."""
        return list(self._states.items())

    def touch(self, owner: str) -> None:
        """Count the state as recently used (it is dropped last)."""
        if owner in self._states:
            self._states.move_to_end(owner)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share.

    Slices are compared in C, halving the range each time: a few
    microseconds for thousands of tokens, where a Python loop takes a
    millisecond.
    """
    a, b = list(a), list(b)
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low]; a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle
    return low
