"""Conversation caches: which KV each slot holds, and the states parked in RAM.

A slot is one llama.cpp sequence. After a prompt ends, its slot keeps the
conversation's KV cache (owner + tokens), so the conversation's next turn only
processes the tokens it adds. When another conversation needs the slot, the
owner's sequence state is copied out with `llama_state_seq_get_data` into
`HostCache` (bounded by `ContextParams.cache_ram_mib`), and copied back in with
`llama_state_seq_set_data` when that conversation returns: a memcpy instead of
processing its whole history again.
"""

from __future__ import annotations

import collections
import ctypes
from dataclasses import dataclass, field

import llama_cpp as C


@dataclass(frozen=True)
class ParkedState:
    """A sequence's KV state outside the context, with the tokens it holds."""

    tokens: tuple[int, ...]
    data: bytes


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


def copy_out(ctx: int, slot: Slot) -> ParkedState:
    """The slot's sequence state as bytes (the KV stays in the context)."""
    size = C.llama_state_seq_get_size(ctx, slot.seq_id)
    buf = (ctypes.c_uint8 * size)()
    written = C.llama_state_seq_get_data(ctx, buf, size, slot.seq_id)
    return ParkedState(tuple(slot.tokens), bytes(buf)[:written])


def copy_in(ctx: int, slot: Slot, state: ParkedState) -> bool:
    """Load a parked state into the (empty) slot's sequence; False if llama.cpp refused it."""
    if not state.data:
        return not state.tokens
    buf = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
    if C.llama_state_seq_set_data(ctx, buf, len(state.data), slot.seq_id) == 0:
        return False
    slot.tokens = list(state.tokens)
    return True


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
