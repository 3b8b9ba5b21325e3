"""Several choices for one prompt: the prompt is read once, then its KV cache is copied to more slots.

When a prompt asked for `n` choices has its first logits, `fork` starts
choices 1 to n-1 from them: each gets a slot holding a copy of the prompt's
KV (`llama_memory_seq_cp`, which llama.cpp performs before the next decode),
a sampler of its own (the request's seed plus the choice's index, so a seed
gives the same choices whatever else is in the batch), and samples its first
token from the same logits as choice 0. From there each decodes like any
other sequence in the batch.

Until the fork, the slots it will need stay reserved (`reserved`), so that
later prompts cannot take them.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Iterable

from .batch import Running
from .prompt import Prompt
from .sampling import Sampler
from .slots import SlotPool
from .text import Detokenizer


def reserved(running: Iterable[Running]) -> int:
    """Slots held back for choices not started yet."""
    return sum(run.request.n - 1 for run in running if run.choice == 0 and run.request.n > 1 and not run.forked)


def fork(run: Running, slots: SlotPool, busy: set[int], *, vocab: int, n_vocab: int, n_ctx: int) -> list[Running]:
    """Choices 1 to n-1 of `run`'s prompt, each in a slot of its own holding a copy of the prompt's KV."""
    run.forked = True
    request = run.request
    seed = request.sampler.seed
    forks: list[Running] = []
    for choice in range(1, request.n):
        slot = slots.fork(run.slot, f"\0choice-{request.prompt_id}-{choice}", busy)
        if slot is None:  # cannot happen while the reservation holds; fewer choices rather than none
            break
        busy.add(slot.seq_id)
        params = dataclasses.replace(request.sampler, seed=None if seed is None else (seed + choice) % 2**32)
        forks.append(
            Running(
                request=request,
                slot=slot,
                prompt=Prompt([]),
                pending=collections.deque(),
                n_prompt=0,
                n_cached=run.n_cached,
                n_dropped=run.n_dropped,
                sampler=Sampler(params, vocab=vocab, n_vocab=n_vocab, n_ctx=n_ctx, logprobs=request.logprobs),
                detok=Detokenizer(request.sampler.stop),
                started=run.started,
                first_token=time.perf_counter(),
                choice=choice,
                logits_index=run.logits_index,
            )
        )
    run.forks = len(forks)
    return forks
