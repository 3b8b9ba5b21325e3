"""Speculative decoding's guessing side, without a model: n-gram drafts, acceptance, step cost and the plan."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from llama_isolate import LlamaValueError, Speculative
from llama_isolate._worker.speculate import (
    MARGIN,
    PAUSE_FIRST,
    Acceptance,
    DraftState,
    NgramDrafter,
    Speculator,
    StepCost,
    plan,
)


def test_an_ngram_draft_is_what_followed_the_last_match_of_the_sequence_end() -> None:
    drafter = NgramDrafter(range(2, 5))
    tokens = [1, 2, 3, 4, 5, 6, 9, 9, 1, 2]
    assert drafter.propose(tokens, 3, limit=3) == [4, 5, 6]  # "1 2 3" came before, then 4 5 6
    assert drafter.propose(tokens, 7, limit=3) == []  # "2 7" never did
    assert NgramDrafter(range(2, 5)).propose([5, 6, 7, 8, 5, 6], 7, limit=4) == [8, 5, 6, 7]  # into the present


def test_the_longest_match_wins_and_the_newest_occurrence_of_it() -> None:
    drafter = NgramDrafter(range(1, 4))
    tokens = [7, 1, 2, 8, 3, 1, 2, 9, 5, 5]
    assert drafter.propose(tokens, 1, limit=2) == [2, 9]  # "1": its newest occurrence
    assert drafter.propose([*tokens, 1, 2], 8, limit=1) == [3]  # "1 2 8" beats the newer "2 ?" matches


def test_a_cut_sequence_never_drafts_from_the_tokens_it_lost() -> None:
    drafter = NgramDrafter(range(2, 3))
    tokens = [4, 5, 6, 7, 4, 5]
    assert drafter.propose(tokens, 6, limit=2) == [7, 4]
    del tokens[2:]  # a rejected draft's cache is cut back; the index still remembers "5 6" -> 7
    tokens += [8, 8]
    assert drafter.propose(tokens, 5, limit=2) == []  # "8 5" never occurred


def test_acceptance_falls_with_misses_and_a_failing_sequence_rests_then_tries_again() -> None:
    acceptance = Acceptance()
    assert acceptance.rate == 0.5 and not acceptance.resting()
    acceptance.observe(drafted=8, accepted=8)
    high = acceptance.rate
    assert high > 0.8
    for _ in range(40):
        acceptance.observe(drafted=4, accepted=0)
        if acceptance.rate < 0.15:
            break
    rests = 0
    while acceptance.resting():
        rests += 1
    assert rests == PAUSE_FIRST and acceptance.rate == 0.5  # rested, then a fresh start


def test_an_estimate_too_low_to_draft_is_forgotten_after_a_while() -> None:
    acceptance = Acceptance()
    acceptance.observe(drafted=4, accepted=1)
    low = acceptance.rate
    for _ in range(PAUSE_FIRST - 1):
        acceptance.unused()
    assert acceptance.rate == low
    acceptance.unused()
    assert acceptance.rate == 0.5


def test_step_cost_reads_the_slope_of_measured_steps() -> None:
    cost = StepCost()
    for rows in (1, 2, 4, 8, 1, 9):
        cost.observe(rows, 0.010 + 0.004 * (rows - 1))
    assert cost.per_row == pytest.approx(0.004, rel=1e-6) and cost.base == pytest.approx(0.010, rel=1e-6)


def measured(base: float, per_row: float) -> StepCost:
    cost = StepCost()
    for rows in (1, 3, 5):
        cost.observe(rows, base + per_row * (rows - 1))
    return cost


def test_one_stream_drafts_deeper_than_eight_and_a_poor_guesser_not_at_all() -> None:
    cost = measured(0.011, 0.004)  # a row costs about a third of a step: this machine's kind
    alone = plan([(16, 0.95)], rows=1, yield_now=1, cost=cost)
    crowd = plan([(16, 0.95)] * 8, rows=8, yield_now=8, cost=cost)
    assert alone[0] > max(crowd) >= 0 and alone[0] <= 16
    assert plan([(16, 0.2)], rows=1, yield_now=1, cost=cost) == [0]
    cheap = measured(0.011, 0.0001)  # nearly free rows: a good guesser drafts all it has
    assert plan([(16, 0.9)], rows=1, yield_now=1, cost=cheap) == [16]
    dear = plan([(16, 0.95)], rows=1, yield_now=1, cost=cost, guess_s=0.004)  # a draft model's decode per guess
    assert dear[0] < alone[0]


def test_a_plan_takes_rows_only_while_they_raise_tokens_per_second() -> None:
    cost = measured(0.010, 0.003)
    for rate in (0.3, 0.6, 0.9):
        (taken,) = plan([(12, rate)], rows=1, yield_now=1, cost=cost)
        price = 0.003 * MARGIN  # a row must pay for itself with a margin
        best = max(range(13), key=lambda k: sum(rate**i for i in range(k + 1)) / (0.010 + price * k))
        assert taken == best, (rate, taken, best)


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"mode": "beam"}, "speculative.mode"),
        ({"mode": "draft"}, "speculative.draft_model_path"),
        ({"draft_model_path": "x.gguf"}, "speculative.draft_model_path"),
        ({"max_draft": 0}, "speculative.max_draft"),
        ({"min_ngram": 3, "max_ngram": 2}, "speculative.max_ngram"),
        ({"adaptive": 1}, "speculative.adaptive"),
    ],
)
def test_speculative_options_are_checked_when_made(options: dict[str, object], param: str) -> None:
    with pytest.raises(LlamaValueError) as caught:
        Speculative(**options)  # type: ignore[arg-type]
    assert caught.value.param == param


@dataclass
class FakeRun:
    """What `Speculator.draft` reads of a generating sequence."""

    tokens: list[int]
    next_token: int | None
    spec: DraftState | None = None
    draft: list[int] = field(default_factory=list)
    generated: int = 0
    max_tokens: int = 100

    @property
    def n_past(self) -> int:
        return len(self.tokens)


def test_a_fresh_sequence_probes_one_row_where_the_plan_takes_none_then_follows_the_plan() -> None:
    speculator = Speculator(Speculative(), n_ctx=512, n_batch=64)
    for rows in (1, 2, 3):
        speculator.cost.observe(rows, 0.010 + 0.009 * (rows - 1))  # rows nearly as dear as a step: 0.5 won't pay
    run = FakeRun(tokens=[1, 2, 3, 4, 1, 2], next_token=3, spec=speculator.new_state(0))
    speculator.draft([run])
    assert run.draft == [4]  # the probe
    assert run.spec is not None
    run.spec.verified(1, 0)  # it failed
    speculator.draft([run])
    assert run.draft == []  # now the plan decides, and it takes nothing


def test_a_draft_stops_before_an_image_position() -> None:
    speculator = Speculator(Speculative(adaptive=False), n_ctx=512, n_batch=64)
    image = [-7, -8, -9]  # an image's placeholder ids, as the slot holds them
    run = FakeRun(tokens=[5, 6, 7, *image, 8, 5, 6], next_token=7, spec=speculator.new_state(0))
    speculator.draft([run])
    assert run.draft == []  # what followed "5 6 7" was the image: nothing to guess
    run = FakeRun(tokens=[5, 6, 7, 4, *image, 5, 6], next_token=7, spec=speculator.new_state(0))
    speculator.draft([run])
    assert run.draft == [4]
