"""The slot pool: which KV cache each llama.cpp sequence holds, and which prompt gets which.

A slot is one sequence id. After a prompt ends its slot keeps the
conversation's cache, so the next turn only processes what it adds. When
another conversation needs the slot, the owner's state is parked in RAM
(`HostCache`) and copied back in when it returns.

Caches outlive their conversations: a disposed scope's slot keeps its tokens
as an orphan, and a prompt of a conversation with no cache of its own starts
from whichever cache shares the longest prefix with it, in a slot or parked.
So a client of a stateless API that sends turn N+1 with the whole history
reuses the KV of turn N, and conversations that share a system prompt
process it once.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import cast

import llama_cpp as C

from .cache import HostCache, ParkedState, Slot, common_prefix
from .prompt import ImageChunk, Item, Prompt
from .seqstate import capture, copy, restore

logger = logging.getLogger("llama_isolate.worker")


_ORPHAN = "\0orphan-"  # parked caches that no conversation owns any more
PARK_MIN = 64  # an orphan cache shorter than this is not worth parking: processing it again is quick
# A cache is copied (to another slot, or back from RAM) for a shared prefix at least 1/COPY_MAX of its
# length: copying a token's KV is some hundred times cheaper than computing it, and the copy holds the
# engine's loop.
COPY_MAX = 32


class SlotPool:
    """`n` slots over one context, and the parked states of conversations without one."""

    def __init__(self, ctx: int, model: int, n: int, cache_bytes: int) -> None:
        self._ctx = ctx
        self._model = model
        self._memory = C.llama_get_memory(ctx) if ctx else None
        self.slots = [Slot(seq_id) for seq_id in range(n)]
        self._parked = HostCache(cache_bytes)
        self._clock = itertools.count(1)
        self._orphans = itertools.count(1)

    def any_free(self, busy: set[int]) -> bool:
        """True if a slot is not running a prompt."""
        return any(slot.seq_id not in busy for slot in self.slots)

    def assign(self, owner: str, wanted: Sequence[int], busy: set[int]) -> Slot:
        """A free slot for `owner`'s prompt (whose positions are `wanted`), holding the best cache for it.

        In order of preference: the slot `owner` holds; its parked state; the
        cache, in a free slot or parked, whichever conversation left it, that
        shares the longest prefix with `wanted` (at least a tenth of it, as
        llama.cpp's server asks); else an empty slot, or the least recently
        used. A cache that has to leave its slot is parked first. The slot
        may hold more than the shared prefix: `reuse_prefix` cuts it.
        """
        free = [slot for slot in self.slots if slot.seq_id not in busy]
        assert free, "assign() needs a free slot (any_free)"
        slot = next((s for s in free if s.owner == owner), None)
        if slot is None:
            parked = self._parked.pop(owner)
            if parked is not None:
                slot = self._vacate(free)
                self._restore(slot, parked)
            else:
                slot = self._best_match(wanted, free) or self._vacate(free)
        slot.owner = owner
        slot.last_used = next(self._clock)
        return slot

    def _best_match(self, wanted: Sequence[int], free: list[Slot]) -> Slot | None:
        """The free slot holding the longest useful prefix of `wanted`, restored from RAM if that is where it is.

        A cache is useful when its shared prefix is at least a tenth of the
        prompt (as llama.cpp's server asks). A parked state must share more
        than any slot does, and at least 1/`COPY_MAX` of its length: restoring
        it is a copy, which pays only for a long enough prefix.
        """
        best, source = 0, cast("Slot | str | None", None)
        # Of slots sharing as much, an orphan before a live conversation's, and the least recently used
        # first: if its cache has to be cut, that loses the least.
        for slot in sorted(free, key=lambda s: (s.owner is not None, s.last_used)):
            shared = common_prefix(slot.tokens, wanted)
            if shared > best:
                best, source = shared, slot
        parked: ParkedState | None = None
        for key, state in self._parked.items():
            shared = common_prefix(state.tokens, wanted)
            if shared > best and len(state.tokens) <= COPY_MAX * shared:
                best, source, parked = shared, key, state
        if source is None or best * 10 < len(wanted):
            return None
        if isinstance(source, Slot):
            return self._take(source, best, free)
        assert parked is not None
        self._parked.touch(source)
        slot = self._vacate(free)
        self._restore(slot, parked)
        return slot

    def _take(self, source: Slot, shared: int, free: list[Slot]) -> Slot | None:
        """The slot to run a prompt in that starts with `shared` of `source`'s cached tokens.

        An orphan whose cache goes little beyond the prefix (the previous turn
        of the same conversation, resent) is taken as it is. Otherwise the
        rest of the cache may still be wanted (by its owner, or by the client
        that left it and comes back with the whole history), so it is copied
        into an empty slot, when it is at most `COPY_MAX` times the prefix
        (a bigger copy costs more than processing the prefix again); failing
        that it is parked, when it is long enough to be worth keeping, and the
        slot taken. A prefix shorter than `PARK_MIN` is not worth losing a
        long cache for while an empty slot is free.
        """
        tail = len(source.tokens) - shared
        if source.owner is None and tail <= shared // 4:
            return source
        empty = next((slot for slot in free if not slot.tokens), None)
        if empty is not None:
            if len(source.tokens) <= COPY_MAX * shared and copy(self._ctx, source, empty):
                return empty
            if shared < PARK_MIN:
                return None
        if source.owner is not None or tail >= PARK_MIN:
            self._park(source)  # its owner (or a later client) may want the whole cache back
        return source

    def longest_prefix(self, wanted: Sequence[int]) -> int:
        """The most tokens from the start of `wanted` that one cache holds, in a slot or parked (nothing changes)."""
        held = [slot.tokens for slot in self.slots] + [state.tokens for _, state in self._parked.items()]
        return max((common_prefix(tokens, wanted) for tokens in held), default=0)

    def fork(self, source: Slot, owner: str, busy: set[int]) -> Slot | None:
        """A free slot other than `source`, made to hold a copy of its KV (copied at the next decode)."""
        free = [slot for slot in self.slots if slot.seq_id not in busy and slot is not source]
        if not free or self._memory is None:
            return None
        slot = self._vacate(free)
        C.llama_memory_seq_cp(self._memory, source.seq_id, slot.seq_id, -1, -1)
        slot.tokens = list(source.tokens)
        slot.owner = owner
        slot.last_used = next(self._clock)
        return slot

    def free_count(self, busy: set[int]) -> int:
        """Slots not running a prompt."""
        return sum(slot.seq_id not in busy for slot in self.slots)

    def _vacate(self, free: list[Slot]) -> Slot:
        """An empty free slot: one already empty, else the least recently used, its cache parked."""
        slot = min(free, key=lambda s: (bool(s.tokens), s.owner is not None, s.last_used))
        if slot.tokens:
            self._park(slot)
        self.clear(slot)
        return slot

    def _park(self, slot: Slot) -> None:
        """Copy the slot's cache to RAM under its owner (an orphan's under a key of its own, if long enough)."""
        if slot.owner is not None:
            self._parked.put(slot.owner, capture(self._ctx, slot))
        elif len(slot.tokens) >= PARK_MIN:
            self._parked.put(f"{_ORPHAN}{next(self._orphans)}", capture(self._ctx, slot))

    def _restore(self, slot: Slot, state: ParkedState) -> None:
        if not restore(self._ctx, slot, state):
            logger.warning("a parked KV cache did not load; the prompt is processed again")
            self.clear(slot)

    def clear(self, slot: Slot) -> None:
        """Empty the slot's sequence and forget its owner."""
        if self._memory is not None:
            C.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        slot.tokens.clear()
        slot.owner = None

    def cut(self, slot: Slot, keep: int) -> None:
        """Remove the slot's positions from `keep` on (after a failed or aborted decode)."""
        if self._memory is not None:
            C.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1)
        del slot.tokens[keep:]

    def drop(self, owner: str, busy: set[int]) -> None:
        """`owner` is gone: its caches stay, as orphans, for prompts that start the same way."""
        parked = self._parked.pop(owner)
        if parked is not None and len(parked.tokens) >= PARK_MIN:
            self._parked.put(f"{_ORPHAN}{next(self._orphans)}", parked)
        for slot in self.slots:
            if slot.owner == owner and slot.seq_id not in busy:
                slot.owner = None

    def save(self, owner: str) -> ParkedState:
        """`owner`'s state (empty if it has none), from its slot or from RAM."""
        for slot in self.slots:
            if slot.owner == owner and self._ctx:
                return capture(self._ctx, slot)
        parked = self._parked.pop(owner)
        if parked is None:
            return ParkedState((), b"")
        self._parked.put(owner, parked)
        return parked

    def load(self, owner: str, state: ParkedState, busy: set[int]) -> bool:
        """Make `state` `owner`'s cache: in a free slot, else parked until used; False if llama.cpp refused it."""
        self.drop(owner, busy)
        if not state.tokens:
            return True
        free = [slot for slot in self.slots if slot.seq_id not in busy]
        if not free:
            self._parked.put(owner, state)  # checked when it is used
            return True
        slot = self._vacate(free)
        if restore(self._ctx, slot, state):
            slot.owner = owner
            slot.last_used = next(self._clock)
            return True
        self.clear(slot)
        return False

    def reuse_prefix(self, slot: Slot, prompt: Prompt, positions: Sequence[int]) -> tuple[int, list[Item]]:
        """Keep the cached positions the prompt starts with; returns how many, and the items left to do.

        `positions` is `prompt.flat()`.
        """
        # At least one position must be decoded to get logits for the reply,
        # and an image is reused whole or not at all.
        keep = min(common_prefix(slot.tokens, positions), len(prompt) - 1)
        pending: list[Item] = []
        position = 0
        for item in prompt.items:
            size = len(item.ids) if isinstance(item, ImageChunk) else 1
            if position + size > keep:
                if not pending:
                    keep = position
                pending.append(item)
            position += size
        if keep < len(slot.tokens):
            # A sliding-window or recurrent cache may not be cut part-way.
            assert self._memory is not None
            if not C.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1) or not self._window_intact(slot, keep):
                C.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                keep, pending = 0, list(prompt.items)
            del slot.tokens[keep:]
        return keep, pending

    def _window_intact(self, slot: Slot, keep: int) -> bool:
        n_swa = C.llama_model_n_swa(self._model)
        if n_swa <= 0 or keep == 0:
            return True
        return bool(int(C.llama_memory_seq_pos_min(self._memory, slot.seq_id)) <= max(0, keep - n_swa))
