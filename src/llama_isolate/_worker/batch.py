"""Batch building: which tokens of which sequences go into the next `llama_decode`.

Generating sequences come first, one token each; then chunks of prompts
still being read, in admission order, up to `n_batch` tokens. While anything
generates, a prompt is read in short chunks, so the others' next tokens are
never more than one short chunk away.

A prompt's last token is always decoded on its own, in the step after the
rest of the prompt: the one whose logits give the first reply token. llama.cpp
computes a sequence's single token with other kernels than a chunk of
several (its attention, and on some CPUs its matrix products), so the last
bits of those logits depend on the chunk's shape. A prompt whose start came
from a cache has only its last token left to decode, so without this rule the
same request answered differently cached and fresh (with flash attention, a
900-token prompt's first log probability moved from -0.9846 to -0.9823).
Batched with other sequences it still shares a step with them, as any
generated token does.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import llama_cpp as C

from .. import _protocol as protocol
from .cache import Slot
from .prompt import ImageChunk, Item, Prompt
from .sampling import Sampler
from .speculate import DraftState
from .text import Detokenizer

# While other sequences generate, a new prompt is read in chunks this small.
PROMPT_CHUNK_WHILE_GENERATING = 64

Entry = tuple[int, int, int, bool]  # token, position, sequence id, wants logits


@dataclass(eq=False)
class Running:
    """One prompt being processed in one slot."""

    request: protocol.Submit
    slot: Slot
    prompt: Prompt  # owns the mtmd chunks that image items point into
    pending: collections.deque[Item]  # prompt tokens and images not decoded yet
    n_prompt: int  # prompt positions to process (after the cached prefix)
    n_cached: int  # prompt tokens reused from the slot's cache
    n_dropped: int  # oldest messages left out to fit the context
    sampler: Sampler
    detok: Detokenizer
    generated: int = 0
    next_token: int | None = None  # sampled, to be decoded next step
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    choice: int = 0  # which of the request's `n` choices this is
    forked: bool = False  # on choice 0: the other choices were started (see `choices.fork`)
    forks: int = 0  # on choice 0: how many were
    call_sent: int = 0  # characters of the reply's tool call (`Detokenizer.call_text`) sent so far
    spec: DraftState | None = None  # its speculation, when the load has one
    draft: list[int] = field(default_factory=list)  # tokens guessed to follow next_token, verified this step
    # this step's share of the batch:
    batch_tokens: list[int] = field(default_factory=list)
    logits_index: int = -1  # the batch row of its first logits (a draft's follow, one row each)

    @property
    def n_past(self) -> int:
        return len(self.slot.tokens)

    @property
    def tokens(self) -> list[int]:
        """The tokens in its KV cache."""
        return self.slot.tokens

    @property
    def max_tokens(self) -> int:
        return self.request.max_tokens


class Batch:
    """One reusable `llama_batch` of up to `capacity` tokens."""

    def __init__(self, capacity: int, n_batch: int) -> None:
        self.handle = C.llama_batch_init(capacity, 0, 1)
        self._n_batch = n_batch

    def fill(self, entries: list[Entry]) -> None:
        """Make the batch hold exactly `entries`."""
        batch = self.handle
        for i, (token, pos, seq_id, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = logits
        batch.n_tokens = len(entries)

    def schedule(self, running: Iterable[Running]) -> list[Running]:
        """Fill the batch for one step; returns the sequences in it (each knows its share)."""
        runs = list(running)
        scheduled = [r for r in runs if r.next_token is not None]
        for run in scheduled:
            assert run.next_token is not None
            run.batch_tokens = [run.next_token, *run.draft]
        budget = self._n_batch - sum(len(run.batch_tokens) for run in scheduled)
        if scheduled:
            budget = min(budget, PROMPT_CHUNK_WHILE_GENERATING)
        for run in runs:  # prompts in admission order: the first admitted is read first
            if run.next_token is not None or not run.pending or budget <= 0:
                continue
            chunk = leading_tokens(run.pending, budget)
            if len(chunk) == len(run.pending) > 1:
                chunk.pop()  # the prompt's last token is decoded on its own, next step (see the module's docstring)
            if not chunk:
                continue  # an image comes next: evaluated at the start of the next step
            run.batch_tokens = chunk
            budget -= len(chunk)
            scheduled.append(run)
        self.fill(self._entries(scheduled))
        return scheduled

    @staticmethod
    def _entries(scheduled: list[Running]) -> list[Entry]:
        """The batch's tokens, in order of sequence id; sets each run's `logits_index`.

        With a KV stream per sequence, llama.cpp computes one ubatch only for
        sequences whose ids follow each other in the batch (0, 1, 2, ...); any
        other order splits the step into several passes over the weights, each
        costing nearly a whole step (8 sequences: 42 ms in one pass, 57 ms when
        the order split it).
        """
        entries: list[Entry] = []
        for run in sorted(scheduled, key=lambda r: r.slot.seq_id):
            start, seq_id = run.n_past, run.slot.seq_id
            if run.next_token is not None:  # generating: logits at its token and at each draft token after it
                run.logits_index = len(entries)
                entries.extend((tok, start + i, seq_id, True) for i, tok in enumerate(run.batch_tokens))
                continue
            wants = len(run.batch_tokens) == len(run.pending)
            entries.extend((tok, start + i, seq_id, False) for i, tok in enumerate(run.batch_tokens))
            if wants:
                entries[-1] = (*entries[-1][:3], True)
            run.logits_index = len(entries) - 1 if wants else -1
        return entries

    def free(self) -> None:
        """Release the batch; idempotent."""
        if self.handle is not None:
            C.llama_batch_free(self.handle)
            self.handle = None


def leading_tokens(pending: collections.deque[Item], limit: int) -> list[int]:
    """Up to `limit` text tokens from the front of `pending`, stopping at an image."""
    tokens: list[int] = []
    for item in itertools.islice(pending, limit):
        if isinstance(item, ImageChunk):
            break
        tokens.append(item)
    return tokens
