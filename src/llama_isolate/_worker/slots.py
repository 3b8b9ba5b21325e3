"""The slot pool: which conversation's KV cache each llama.cpp sequence holds.

A slot is one sequence id. After a prompt ends its slot keeps the
conversation's cache, so the next turn only processes what it adds. When
another conversation needs the slot, the owner's state is parked in RAM
(`HostCache`) and copied back in when it returns.
"""

from __future__ import annotations

import itertools
import logging

import llama_cpp as C

from .cache import HostCache, ParkedState, Slot, common_prefix
from .prompt import ImageChunk, Item, Prompt
from .seqstate import capture, restore

logger = logging.getLogger("llama_isolate.worker")


class SlotPool:
    """`n` slots over one context, and the parked states of conversations without one."""

    def __init__(self, ctx: int, model: int, n: int, cache_bytes: int) -> None:
        self._ctx = ctx
        self._model = model
        self._memory = C.llama_get_memory(ctx) if ctx else None
        self.slots = [Slot(seq_id) for seq_id in range(n)]
        self._parked = HostCache(cache_bytes)
        self._clock = itertools.count(1)

    def free_slot(self, owner: str, busy: set[int]) -> Slot | None:
        """The slot for `owner`: its own, else an empty one, else the least recently used (None: all busy)."""
        free = [s for s in self.slots if s.seq_id not in busy]
        if not free:
            return None
        own = [s for s in free if s.owner == owner]
        return own[0] if own else min(free, key=lambda s: (s.owner is not None, s.last_used))

    def take(self, slot: Slot, owner: str) -> None:
        """Give the slot to `owner`, parking the previous owner's state in RAM and restoring `owner`'s."""
        slot.last_used = next(self._clock)
        if slot.owner == owner:
            return
        if slot.owner is not None and slot.tokens:
            self._parked.put(slot.owner, capture(self._ctx, slot))
        self.clear(slot)
        slot.owner = owner
        parked = self._parked.pop(owner)
        if parked is not None and not restore(self._ctx, slot, parked):
            logger.warning("a parked conversation state did not load; its history is processed again")
            self.clear(slot)
            slot.owner = owner

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
        """Forget `owner`'s cache, in a slot (unless busy) or parked."""
        self._parked.pop(owner)
        for slot in self.slots:
            if slot.owner == owner and slot.seq_id not in busy:
                self.clear(slot)

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
        slot = self.free_slot(owner, busy)
        if slot is None:
            self._parked.put(owner, state)  # checked when it is used
            return True
        self.take(slot, owner)
        if restore(self._ctx, slot, state):
            return True
        self.clear(slot)
        return False

    def reuse_prefix(self, slot: Slot, prompt: Prompt) -> tuple[int, list[Item]]:
        """Keep the cached positions the prompt starts with; returns how many, and the items left to do."""
        # At least one position must be decoded to get logits for the reply,
        # and an image is reused whole or not at all.
        keep = min(common_prefix(slot.tokens, prompt.flat()), len(prompt) - 1)
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
