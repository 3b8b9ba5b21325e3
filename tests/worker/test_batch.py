"""How a step's batch is laid out: llama.cpp decodes it in one pass only when its sequences come in id order."""

from __future__ import annotations

import collections
from types import SimpleNamespace
from typing import Any

import pytest

from llama_isolate._worker.batch import PROMPT_CHUNK_WHILE_GENERATING, Batch


def run(
    seq_id: int,
    *,
    next_token: int | None = None,
    pending: list[int] = (),  # type: ignore[assignment]
    n_past: int = 10,
    draft: list[int] = (),  # type: ignore[assignment]
) -> Any:
    """A stand-in for `Running`: the fields `Batch.schedule` reads and writes."""
    return SimpleNamespace(
        slot=SimpleNamespace(seq_id=seq_id),
        next_token=next_token,
        pending=collections.deque(pending),
        n_past=n_past,
        draft=list(draft),
        batch_tokens=[],
        logits_index=-1,
    )


def laid_out(batch: Batch) -> list[tuple[int, int, int, bool]]:
    handle = batch.handle
    return [
        (handle.token[i], handle.pos[i], handle.seq_id[i][0], bool(handle.logits[i])) for i in range(handle.n_tokens)
    ]


@pytest.fixture
def batch() -> Any:
    made = Batch(512, 512)
    yield made
    made.free()


def test_generating_sequences_are_laid_out_in_id_order_whatever_order_they_started_in(batch: Batch) -> None:
    # Admitted 5, 0, 3, 1: llama.cpp would split that order into three passes over the weights.
    runs = [run(5, next_token=50), run(0, next_token=0), run(3, next_token=30), run(1, next_token=10)]
    batch.schedule(runs)
    assert [seq for _, _, seq, _ in laid_out(batch)] == [0, 1, 3, 5]
    for r in runs:
        assert laid_out(batch)[r.logits_index][0] == r.next_token  # each reads its own logits


def test_a_prompt_chunk_sits_at_its_sequence_place_and_asks_for_no_logits(batch: Batch) -> None:
    reading = run(1, pending=[7, 8, 9, 10], n_past=4)
    runs = [run(2, next_token=20), reading, run(0, next_token=0)]
    batch.schedule(runs)
    assert laid_out(batch) == [
        (0, 10, 0, True),
        (7, 4, 1, False),
        (8, 5, 1, False),
        (9, 6, 1, False),
        (20, 10, 2, True),
    ]
    assert reading.logits_index == -1
    assert reading.batch_tokens == [7, 8, 9]


def test_a_prompts_last_token_is_decoded_alone_in_the_next_step(batch: Batch) -> None:
    reading = run(0, pending=[7, 8, 9], n_past=0)
    batch.schedule([reading])
    assert reading.batch_tokens == [7, 8]  # the whole prompt would fit, but its last token waits
    assert reading.logits_index == -1
    reading.pending.popleft()
    reading.pending.popleft()
    reading.n_past = 2
    batch.schedule([reading, run(1, next_token=5)])
    assert laid_out(batch) == [(9, 2, 0, True), (5, 10, 1, True)]  # alone for its sequence, with its logits


def test_prompts_share_the_budget_in_admission_order_not_id_order(batch: Batch) -> None:
    first, second = run(3, pending=list(range(100)), n_past=0), run(1, pending=list(range(100)), n_past=0)
    scheduled = batch.schedule([run(0, next_token=5), first, second])
    # While a sequence generates, prompts are read in short chunks; the earlier admitted one goes first.
    assert first.batch_tokens == list(range(PROMPT_CHUNK_WHILE_GENERATING))
    assert second not in scheduled
    assert first.logits_index == -1  # more of its prompt is still to come
    assert [seq for _, _, seq, _ in laid_out(batch)] == [0] + [3] * PROMPT_CHUNK_WHILE_GENERATING


def test_a_draft_follows_its_token_with_logits_at_every_row_and_leaves_prompts_less_room(batch: Batch) -> None:
    drafting = run(1, next_token=7, n_past=20, draft=[8, 9, 10])
    plain = run(0, next_token=5, n_past=4)
    reading = run(2, pending=list(range(100, 200)), n_past=0)
    Batch.schedule(batch, [drafting, plain, reading])
    rows = laid_out(batch)
    assert rows[:5] == [(5, 4, 0, True), (7, 20, 1, True), (8, 21, 1, True), (9, 22, 1, True), (10, 23, 1, True)]
    assert plain.logits_index == 0 and drafting.logits_index == 1  # the first of its rows; the draft's follow
    assert len(reading.batch_tokens) == PROMPT_CHUNK_WHILE_GENERATING
