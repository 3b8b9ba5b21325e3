"""Speculative decoding's guessing side: where drafts come from, and how many tokens of them a step takes.

A generating sequence normally adds one token to a step's batch. With a draft
it adds the draft too, and asks for logits at every position; the engine then
samples the target model position by position and keeps each draft token only
while the token it samples is that very one (see `Engine._sample`). So what
is decided here changes the speed, never the text.

How long a draft is worth, per sequence and step (`plan`): the i-th token of
a draft is used only if the i-1 before it were, so with a per-token acceptance
rate p its expected yield is p**i tokens; its price is one more batch row,
whose time `StepCost` measures on this machine, in this run. Rows go to the
drafts with the best yield first, while a row still yields more tokens per
second than the step does as it stands; so one stream drafts deep, eight
streams draft only what is nearly certain, and a sequence whose guesses keep
failing drafts nothing for a while (`Acceptance`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from .._params import LlamaLoad, Speculative
from .abort import AbortFlag
from .draft_model import DraftModel, ModelDrafter
from .llama import LlamaLog

# A sequence whose acceptance falls under this rests from drafting (PAUSE_FIRST steps, doubling up to PAUSE_MAX).
ACCEPTANCE_FLOOR = 0.15
PAUSE_FIRST = 16
PAUSE_MAX = 256
_DECAY = 0.9  # how fast an acceptance estimate forgets (per draft verified)
# A row is taken only if it raises tokens per second by this margin: the cost fit is noisy on a busy machine,
# and a checked row costs some Python besides its decode (its sampling, a cut when it is rejected).
MARGIN = 1.25


class Drafter(Protocol):
    """Proposes the tokens most likely to follow a sequence."""

    @property
    def guess_s(self) -> float:
        """Seconds one guessed token costs to make (0 for a lookup): a drafter that pays per token is asked only
        for as many as the step will take."""
        ...

    def propose(self, tokens: Sequence[int], next_token: int, limit: int) -> list[int]:
        """Up to `limit` tokens guessed to follow `tokens` + [`next_token`] (possibly none)."""
        ...


class NgramDrafter:
    """Prompt lookup: the tokens that followed an earlier occurrence of the sequence's last tokens.

    A reply that copies its input copies it in order, so once a draft came
    from some place, the next one continues from the same place as long as
    the tokens since agree with it (the copy goes on), even where the last
    few tokens alone would match elsewhere too (``file = Path(path)`` written
    twice in the code being copied). Otherwise the last n tokens are looked
    up, the longest n first: one index per length maps each n-gram to the
    position just after where it last ended, grown with the tokens and read
    in O(1). The sequence's cache may be cut back (a draft rejected, a stop);
    an entry pointing past the cut, or at tokens that changed, is checked on
    use and ignored.

    Example::

        drafter = NgramDrafter(range(2, 5))
        drafter.propose([5, 6, 7, 8, 5, 6], 7, limit=4)  # [8, 5, 6, 7]
    """

    guess_s = 0.0

    def __init__(self, sizes: Iterable[int]) -> None:
        self._sizes = sorted(set(sizes), reverse=True)  # longest first: the surest match
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self._sizes}
        self._seen = 0  # tokens[:seen] are indexed
        self._lag: int | None = None  # how far behind the position being written the copied place is

    def propose(self, tokens: Sequence[int], next_token: int, limit: int) -> list[int]:
        end = len(tokens)
        at = self._follow(tokens, next_token)
        if at is None:
            at = self._lookup(tokens, next_token)
        if at is None:
            self._lag = None
            return []
        self._lag = end + 1 - at
        draft = list(tokens[at : at + limit])
        if len(draft) < limit and at + len(draft) == end:  # the copied place runs into the present: it goes on
            draft.append(next_token)
        return draft[:limit]

    def _follow(self, tokens: Sequence[int], next_token: int) -> int | None:
        """Where the copy being followed goes on, if its last `min size` tokens still agree."""
        if self._lag is None:
            return None
        end, lag = len(tokens), self._lag
        check = min(self._sizes[-1], end - lag + 1)
        source = end - lag  # where next_token stands in the copied place
        if source < check - 1 or source >= end or tokens[source] != next_token:
            return None
        if tuple(tokens[source - check + 1 : source]) != tuple(tokens[end - check + 1 : end]):
            return None
        return source + 1

    def _lookup(self, tokens: Sequence[int], next_token: int) -> int | None:
        end = len(tokens)
        self._grow(tokens)
        for n in self._sizes:
            if n > end + 1:
                continue
            key = (*tokens[end - n + 1 :], next_token) if n > 1 else (next_token,)
            at = self._index[n].get(key)
            if at is not None and at <= end and tuple(tokens[at - n : at]) == key:
                return at
        return None

    def _grow(self, tokens: Sequence[int]) -> None:
        end = len(tokens)
        seen = min(self._seen, end)
        for n, index in self._index.items():
            for stop in range(max(seen, n), end + 1):  # n-grams ending at stop (exclusive), the newest last
                index[tuple(tokens[stop - n : stop])] = stop
        self._seen = end


class Acceptance:
    """One sequence's running acceptance rate, and its rest when its drafts keep failing.

    Example::

        acceptance = Acceptance()
        acceptance.observe(drafted=8, accepted=8)
        acceptance.rate  # higher than before
    """

    def __init__(self) -> None:
        self._hits = 1.0  # a prior of one hit and one miss: 0.5 until something is seen
        self._misses = 1.0
        self._pause = 0
        self._next_pause = PAUSE_FIRST
        self._unused = 0  # steps in a row whose draft the plan did not take
        self.fresh = True  # nothing observed since the estimate was (re)set: the next draft is worth a try

    @property
    def rate(self) -> float:
        """The estimated chance that a draft token is accepted, given the ones before it were."""
        return self._hits / (self._hits + self._misses)

    def resting(self) -> bool:
        """True while this sequence should not draft; counts one step of its rest."""
        if self._pause > 0:
            self._pause -= 1
            if self._pause == 0:  # back from a rest: a fresh, neutral estimate
                self._hits = self._misses = 1.0
                self.fresh = True
            return True
        return False

    def unused(self) -> None:
        """Its draft was not worth a row this step. An estimate that keeps every draft out is never corrected by
        what a draft would do now, so after a while it is forgotten, and the sequence gets another try."""
        self._unused += 1
        if self._unused >= self._next_pause:
            self._unused = 0
            self._hits = self._misses = 1.0
            self.fresh = True
            self._next_pause = min(PAUSE_MAX, self._next_pause * 2)

    def observe(self, drafted: int, accepted: int) -> None:
        """`accepted` of `drafted` tokens were kept (the first rejection ends a draft)."""
        if drafted <= 0:
            return
        self._unused = 0
        self.fresh = False
        self._hits = _DECAY * self._hits + accepted
        self._misses = _DECAY * self._misses + (1 if accepted < drafted else 0)
        if self.rate < ACCEPTANCE_FLOOR:
            self._pause = self._next_pause
            self._next_pause = min(PAUSE_MAX, self._next_pause * 2)
        elif accepted:
            self._next_pause = PAUSE_FIRST


class StepCost:
    """What a decode step costs on this machine: a fixed part, plus a part per batch row with logits.

    Fitted as the run goes, from the steps' own timings (a running least
    squares over the last few hundred steps), so it follows a busy machine.
    Until it has seen batches of two sizes, it assumes a row costs a tenth of
    a step, which is what a small model on two cores shows.

    Example::

        cost = StepCost()
        cost.observe(rows=1, seconds=0.011)
        cost.observe(rows=9, seconds=0.016)
        cost.per_row  # about 0.0006
    """

    def __init__(self, forget: float = 0.995) -> None:
        self._forget = forget
        self._n = self._x = self._y = self._xx = self._xy = 0.0

    def observe(self, rows: int, seconds: float) -> None:
        f = self._forget
        self._n = f * self._n + 1
        self._x = f * self._x + rows
        self._y = f * self._y + seconds
        self._xx = f * self._xx + rows * rows
        self._xy = f * self._xy + rows * seconds

    @property
    def base(self) -> float:
        """Seconds of a step with one row."""
        if self._n == 0:
            return 0.01
        return max(1e-5, self._y / self._n - self.per_row * (self._x / self._n - 1))

    @property
    def per_row(self) -> float:
        """Seconds one more row adds to a step."""
        if self._n == 0:
            return 0.001
        spread = self._xx / self._n - (self._x / self._n) ** 2
        if spread < 0.25:  # one batch size seen so far: no slope to read
            return 0.1 * self._y / self._n
        slope = (self._xy / self._n - self._x / self._n * self._y / self._n) / spread
        return max(slope, 1e-6)


def plan(
    offers: list[tuple[int, float]], *, rows: int, yield_now: float, cost: StepCost, guess_s: float = 0.0
) -> list[int]:
    """How many tokens of each draft a step takes.

    Args:
        offers: per sequence, how many tokens its draft may have, and its acceptance rate.
        rows: batch rows the step has without drafts.
        yield_now: tokens the step yields without drafts (its generating sequences).
        cost: the step's measured cost.
        guess_s: what guessing one token costs besides its row (a draft model's decode; 0 for n-grams).

    Returns:
        per offer, how many of its tokens to add (a prefix of its draft).
    """
    taken = [0] * len(offers)
    per_row = cost.per_row
    seconds = cost.base + per_row * max(0, rows - 1)
    price = per_row * MARGIN + guess_s
    tokens = yield_now
    # Candidate rows, best yield first: the i-th token of a draft yields rate**i.
    heap = [(-rate, i, 1) for i, (available, rate) in enumerate(offers) if available > 0 and rate > 0]
    heapq.heapify(heap)
    while heap:
        negative, i, depth = heapq.heappop(heap)
        gain = -negative
        if gain * seconds <= price * tokens:  # this row would yield less per second than the step already does
            break
        taken[i] = depth
        seconds += price
        tokens += gain
        available, rate = offers[i]
        if depth < available:
            heapq.heappush(heap, (-(gain * rate), i, depth + 1))
    return taken


class DraftState:
    """One running sequence's speculation: its drafter, its acceptance, and its counts for the completion event."""

    def __init__(self, drafter: Drafter) -> None:
        self.drafter = drafter
        self.acceptance = Acceptance()
        self.drafted = 0  # draft tokens verified
        self.accepted = 0  # of them, kept

    def verified(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted += accepted
        self.acceptance.observe(drafted, accepted)


class Drafting(Protocol):
    """What `Speculator.draft` reads and sets on a generating sequence (the engine's `Running`)."""

    spec: DraftState | None
    draft: list[int]
    next_token: int | None
    generated: int

    @property
    def n_past(self) -> int: ...

    @property
    def tokens(self) -> Sequence[int]: ...

    @property
    def max_tokens(self) -> int: ...


class Speculator:
    """Gives each generating sequence its draft for the next step (see the module's docstring).

    Example::

        speculator = Speculator(Speculative(), n_ctx=4096, n_batch=512)
        run.spec = speculator.new_state(run.slot.seq_id)
        speculator.draft(generating)  # sets each run's `draft`
    """

    def __init__(
        self, params: Speculative, *, n_ctx: int, n_batch: int, model: Callable[[int], Drafter] | None = None
    ) -> None:
        self._params = params
        self._n_ctx = n_ctx
        self._n_batch = n_batch
        self._sizes = range(params.min_ngram, params.max_ngram + 1)
        self._model = model  # a draft model's drafter for a sequence id
        self.cost = StepCost()

    def new_state(self, seq_id: int) -> DraftState:
        """The speculation of the sequence `seq_id`, which starts generating."""
        return DraftState(NgramDrafter(self._sizes) if self._model is None else self._model(seq_id))

    def draft(self, generating: Sequence[Drafting]) -> None:
        """Set `draft` on each of `generating` (the sequences with a next token), within the batch's room.

        A lookup's guesses are made first (they cost nothing) and the plan takes a prefix of each; a draft
        model's are made after the plan, only as many as it takes (each costs a decode of the draft model)."""
        offers: list[tuple[int, float]] = []
        owners: list[tuple[Drafting, DraftState, list[int] | None]] = []
        adaptive = self._params.adaptive
        for run in generating:
            run.draft = []
            state = run.spec
            if state is None or run.next_token is None or (adaptive and state.acceptance.resting()):
                continue
            limit = min(self._params.max_draft, run.max_tokens - run.generated - 1, self._n_ctx - run.n_past - 2)
            if limit <= 0:
                continue
            made = (
                None if state.drafter.guess_s else _text_only(state.drafter.propose(run.tokens, run.next_token, limit))
            )
            if made is not None and not made:
                continue
            offers.append((limit if made is None else len(made), state.acceptance.rate if adaptive else 1.0))
            owners.append((run, state, made))
        if not offers:
            return
        if adaptive:
            guess_s = max(state.drafter.guess_s for _, state, _ in owners)
            taken = plan(offers, rows=len(generating), yield_now=len(generating), cost=self.cost, guess_s=guess_s)
        else:
            taken = [available for available, _ in offers]
        room = self._n_batch - len(generating)
        for (run, state, made), wanted in zip(owners, taken, strict=True):
            acceptance = state.acceptance
            # An estimate never tried would otherwise keep every draft out: a lookup's guess is tried once (it
            # costs one row); a draft model's is not, when even its first guess does not pay for its decode.
            probe = wanted == 0 and acceptance.fresh and not state.drafter.guess_s
            k = min(1 if probe else wanted, max(0, room))
            guessed = made
            if k > 0 and guessed is None:
                assert run.next_token is not None
                guessed = _text_only(state.drafter.propose(run.tokens, run.next_token, k))
            run.draft = (guessed or [])[:k]
            room -= len(run.draft)
            if k == 0:
                acceptance.unused()


def speculator_for(
    load: LlamaLoad, model: int, log: LlamaLog, abort: AbortFlag
) -> tuple[Speculator, DraftModel | None]:
    """The speculation `load.speculative` asks for, with its draft model loaded beside `model` (the caller
    closes it); raises `LoadFailure`."""
    spec = load.speculative
    assert spec is not None
    cp = load.context_params
    if spec.mode != "draft":
        return Speculator(spec, n_ctx=cp.n_ctx, n_batch=cp.n_batch), None
    assert spec.draft_model_path is not None
    draft = DraftModel.load(spec.draft_model_path, target=model, context=cp, log=log, abort=abort)
    return Speculator(spec, n_ctx=cp.n_ctx, n_batch=cp.n_batch, model=lambda seq: ModelDrafter(draft, seq)), draft


def _text_only(draft: list[int]) -> list[int]:
    """The draft up to the first image position (a negative placeholder id, which no decode may be given)."""
    for i, token in enumerate(draft):
        if token < 0:
            return draft[:i]
    return draft
