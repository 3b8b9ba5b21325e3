"""The policy for a conversation that grows past the context window.

A prompt must leave room for its reply: ``n_ctx - min(max_tokens, n_ctx / 4)``
tokens at most (``n_ctx / 4`` when max_tokens is unlimited). A conversation
over that limit loses its oldest exchanges (a user turn with the assistant
turns that follow it); system messages and the new user turn are always
kept. It is cut down to half the limit, so that the next turns fit with the
same cut and still find their prefix in the KV cache, instead of re-cutting
(and re-processing everything) on every turn. The parent's `messages` keep
every turn; only what the model sees is cut, and `dropped_turns` says how much.
A prompt that does not fit even then fails with the token counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .prompt import Prompt

Encode = Callable[[list[int]], Prompt]


class ContextFull(Exception):
    """A conversation that may not lose turns is over the limit; the message gives the counts."""


def exchanges(roles: Sequence[str]) -> list[list[int]]:
    """Indexes of the droppable messages, grouped from each user turn on (the last turn excluded)."""
    groups: list[list[int]] = []
    for i, role in enumerate(roles[:-1]):
        if role == "system":
            continue
        if role == "user" or not groups:
            groups.append([])
        groups[-1].append(i)
    return groups


def kept(n_messages: int, groups: list[list[int]], cut: int) -> list[int]:
    dropped = {i for group in groups[:cut] for i in group}
    return [i for i in range(n_messages) if i not in dropped]


class ContextFitter:
    """Fits conversations into the context; remembers each conversation's cut between turns."""

    def __init__(self, n_ctx: int) -> None:
        self._n_ctx = n_ctx
        self._cuts: dict[str, int] = {}

    def limit(self, max_tokens: int) -> int:
        reserve = self._n_ctx // 4 if max_tokens <= 0 else min(max_tokens, self._n_ctx // 4)
        return self._n_ctx - reserve

    def fit(
        self, scope_id: str, roles: Sequence[str], max_tokens: int, encode: Encode, *, trim: bool = True
    ) -> tuple[Prompt, int]:
        """The prompt of the messages kept (`encode` makes it from their indexes) and how many were left out.

        Without `trim`, a conversation over the limit raises `ContextFull` instead of losing turns.
        """
        limit = self.limit(max_tokens)
        prompt = encode(list(range(len(roles))))
        if len(prompt) <= limit:
            self._cuts.pop(scope_id, None)
            return prompt, 0
        groups = exchanges(roles)
        if not trim and groups:
            size = len(prompt)
            prompt.free()
            raise ContextFull(
                f"the conversation needs {size} tokens, and the context holds {self._n_ctx} with room kept for "
                f"{self._n_ctx - limit} of the reply: {limit} for the prompt. Its oldest turns are left out only when "
                "asked (LlamaScope.trim_history; serve --trim-history, or the request's trim_history)"
            )
        cut = min(self._cuts.get(scope_id, 0), len(groups))
        if cut:
            prompt = self._swap(prompt, encode(kept(len(roles), groups, cut)))
        if cut == 0 or len(prompt) > limit:
            prompt, cut = self._bisect(prompt, cut, len(groups), lambda c: encode(kept(len(roles), groups, c)), limit)
        self._cuts[scope_id] = cut
        return prompt, sum(len(group) for group in groups[:cut])

    @staticmethod
    def _bisect(prompt: Prompt, low: int, high: int, at: Callable[[int], Prompt], limit: int) -> tuple[Prompt, int]:
        """The prompt cut at the fewest exchanges above `low` that fits in `limit // 2` (else cut at `high`).

        A prompt only shrinks as more is cut, so a binary search needs a few
        encodes where cutting one exchange at a time needed one per exchange
        (minutes for a conversation of thousands of short messages).
        """
        prompt.free()
        found: Prompt | None = None
        while high - low > 1:  # the answer is in (low, high]
            middle = (low + high) // 2
            trial = at(middle)
            if len(trial) <= limit // 2:
                if found is not None:
                    found.free()
                found, high = trial, middle
            else:
                trial.free()
                low = middle
        if found is not None:  # it is the cut at `high`
            return found, high
        return at(high), high

    @staticmethod
    def _swap(old: Prompt, new: Prompt) -> Prompt:
        old.free()
        return new

    def forget(self, scope_id: str) -> None:
        self._cuts.pop(scope_id, None)
