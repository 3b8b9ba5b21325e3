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

from .vocab import Vocab

Messages = tuple[tuple[str, str], ...]


def exchanges(messages: Messages) -> list[list[int]]:
    """Indexes of the droppable messages, grouped from each user turn on (the last turn excluded)."""
    groups: list[list[int]] = []
    for i, (role, _) in enumerate(messages[:-1]):
        if role == "system":
            continue
        if role == "user" or not groups:
            groups.append([])
        groups[-1].append(i)
    return groups


def without_oldest(messages: Messages, groups: list[list[int]], count: int) -> Messages:
    dropped = {i for group in groups[:count] for i in group}
    return tuple(m for i, m in enumerate(messages) if i not in dropped)


class ContextFitter:
    """Fits conversations into the context; remembers each conversation's cut between turns."""

    def __init__(self, vocab: Vocab, n_ctx: int) -> None:
        self._vocab = vocab
        self._n_ctx = n_ctx
        self._cuts: dict[str, int] = {}

    def limit(self, max_tokens: int) -> int:
        reserve = self._n_ctx // 4 if max_tokens <= 0 else min(max_tokens, self._n_ctx // 4)
        return self._n_ctx - reserve

    def fit(self, scope_key: str, messages: Messages, max_tokens: int) -> tuple[list[int], int]:
        """The prompt tokens and how many messages were left out."""
        limit = self.limit(max_tokens)
        tokens = self._vocab.prompt_tokens(messages)
        if len(tokens) <= limit:
            self._cuts.pop(scope_key, None)
            return tokens, 0
        groups = exchanges(messages)
        cut = min(self._cuts.get(scope_key, 0), len(groups))
        tokens = self._vocab.prompt_tokens(without_oldest(messages, groups, cut))
        if cut == 0 or len(tokens) > limit:
            while len(tokens) > limit // 2 and cut < len(groups):
                cut += 1
                tokens = self._vocab.prompt_tokens(without_oldest(messages, groups, cut))
        self._cuts[scope_key] = cut
        return tokens, sum(len(group) for group in groups[:cut])

    def forget(self, scope_key: str) -> None:
        self._cuts.pop(scope_key, None)
