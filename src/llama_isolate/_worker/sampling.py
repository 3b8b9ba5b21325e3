"""SamplerParams -> one prompt's `Sampler`: llama.cpp's sampler chain, and its grammar kept apart.

Without a grammar, a token is sampled by `llama_sampler_sample`, all in C.

A grammar cannot be trusted inside that call: when the grammar allows no
token at all (an unsatisfiable rule, or a dead end after some output),
llama.cpp picks one anyway and then throws a C++ exception while accepting
it, which no Python code can catch: the whole worker aborts. So a grammar is
a separate sampler, applied first to the full candidate list; when it leaves
nothing, the prompt fails with a clear error instead. A grammar whose very
first step accepts nothing is refused before the prompt starts.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp as C
import numpy as np

from .._params import SamplerParams

_RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp draws a fresh seed
_MIROSTAT_M = 100  # candidates Mirostat 1 estimates s_hat from (llama.cpp's value)
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class SamplerRefused(ValueError):
    """The prompt's sampler settings cannot be used with this model; the message says why."""


class GrammarError(SamplerRefused):
    """The GBNF grammar did not parse, or accepts nothing."""


class NoCandidate(Exception):
    """Sampling found no token to take (the grammar allows none, or there were no logits)."""


class Candidates:
    """A reusable `llama_token_data_array` over the whole vocabulary, filled from logits with numpy."""

    def __init__(self, n_vocab: int) -> None:
        self._n = n_vocab
        self._data = (C.llama_token_data * n_vocab)()
        self._view: Any = np.frombuffer(self._data, dtype=_TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self.array = C.llama_token_data_array(self._data, n_vocab, -1, False)

    def fill(self, logits: Any) -> None:
        """Every token with its logit (a ctypes float pointer of `n_vocab` values), unsorted."""
        self._view["id"] = self._ids
        self._view["logit"] = np.ctypeslib.as_array(logits, shape=(self._n,))
        self._view["p"] = 0.0
        self.array.data = self._data
        self.array.size = self._n
        self.array.selected = -1
        self.array.sorted = False

    def fill_uniform(self) -> None:
        """Every token with logit 0 (to ask a grammar what it accepts at all)."""
        self._view["id"] = self._ids
        self._view["logit"] = 0.0
        self.array.size = self._n
        self.array.selected = -1
        self.array.sorted = False

    def log_probs(self) -> Any:
        """Each token's log probability (by token id) under the candidates' current logits."""
        size = self.array.size
        logits = self._view["logit"][:size].astype(np.float64)
        out = np.full(self._n, -np.inf)
        finite = np.isfinite(logits)
        if finite.any():
            top = logits[finite].max()
            out[self._view["id"][:size]] = logits - (top + np.log(np.exp(logits[finite] - top).sum()))
        return out

    def any_allowed(self) -> bool:
        """True if some candidate still has a finite logit."""
        return bool(np.isfinite(self._view["logit"][: self.array.size]).any())

    def selected(self) -> int:
        """The token the chain chose."""
        index = self.array.selected
        if index < 0 or index >= self.array.size:
            raise NoCandidate("the sampler chain selected no token")
        return int(self.array.data[index].id)


class Sampler:
    """One prompt's sampling: the chain, the grammar (if any) applied before it, and the log probabilities asked for.

    Without a grammar or log probabilities, the whole chain runs in C
    (`llama_sampler_sample`). Otherwise the chain is split: the stages that
    shape the logits (logit bias, penalties, DRY) run first, log
    probabilities are read from what they leave, and the stages that pick
    (truncation, temperature, the draw) come after.
    """

    def __init__(
        self, params: SamplerParams, *, vocab: int, n_vocab: int, n_ctx: int, logprobs: int | None = None
    ) -> None:
        self._grammar = self._shape = self._chain = 0
        self._argmax = False
        self._bias: tuple[Any, Any] | None = None
        self._candidates: Candidates | None = None
        self._one = (C.llama_token_data * 1)()  # one candidate, to ask the grammar about the chain's pick
        self._logprobs = logprobs
        self._vocab, self._n_vocab = vocab, n_vocab
        self.last: tuple[float, tuple[tuple[int, float], ...]] | None = None  # the last pick's log prob, the top
        try:
            if params.grammar is not None:
                self._grammar = _grammar(params.grammar, vocab, n_vocab)
            shaping, picking = _stages(params, vocab=vocab, n_vocab=n_vocab, n_ctx=n_ctx)
            if not self._grammar and logprobs is None:
                self._chain = _chain(shaping + picking)
                # Greedy with nothing that reshapes the logits but a logit bias: the largest logit, read in
                # place (7 us for 49k tokens, against 70 us for llama.cpp's sampler, which first copies them all).
                self._argmax = _only_biased(params) and (params.greedy or params.temperature == 0)
                self._bias = _bias_arrays(params.logit_bias)
            else:
                self._candidates = Candidates(n_vocab)
                self._shape = _chain(shaping) if shaping else 0
                self._chain = _chain(picking)
        except BaseException:
            self.free()
            raise

    def sample(self, ctx: int, index: int) -> int:
        """The next token from the logits at batch `index`; raises `NoCandidate` if there is none to take."""
        logits = C.llama_get_logits_ith(ctx, index)
        if not logits:
            raise NoCandidate("llama.cpp has no logits for this sequence")
        if self._argmax:
            row = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
            if self._bias is not None:
                row = row.copy()
                row[self._bias[0]] += self._bias[1]  # as llama.cpp's logit-bias stage adds them
            return int(row.argmax())
        if self._candidates is None:
            return int(C.llama_sampler_sample(self._chain, ctx, index))
        candidates = self._candidates
        candidates.fill(logits)
        self._apply(self._shape)
        dist = candidates.log_probs() if self._logprobs is not None else None
        self._apply(self._chain)
        token = candidates.selected()
        # As llama.cpp's own sampling does: the chain picks from every token, and
        # only when the grammar refuses that pick is the grammar applied to the
        # whole vocabulary and the pick redone.
        if self._grammar and not self._grammar_allows(token):
            candidates.fill(logits)
            self._apply(self._grammar)
            if not candidates.any_allowed():
                raise NoCandidate("the grammar allows no token here: it cannot be completed from this output")
            self._apply(self._shape)
            self._apply(self._chain)
            token = candidates.selected()
        for sampler in (self._grammar, self._shape, self._chain):
            if sampler:
                C.llama_sampler_accept(sampler, token)
        if dist is not None:
            self.last = (float(dist[token]), _top(dist, self._logprobs or 0))
        return token

    def activate(self, grammar: str, written: list[int]) -> bool:
        """Constrain the rest of the reply by `grammar`, which must accept `written` first (tokens of text
        already sampled past where it starts); False, and nothing changes, if it does not."""
        if self._grammar:
            return False
        try:
            self._grammar = _grammar(grammar, self._vocab, self._n_vocab)
        except GrammarError:
            return False
        for token in written:
            if not self._grammar_allows(token):
                C.llama_sampler_free(self._grammar)
                self._grammar = 0
                return False
            C.llama_sampler_accept(self._grammar, token)
        if self._candidates is None:  # the whole chain stays one: it both shapes and picks
            self._candidates = Candidates(self._n_vocab)
        self._argmax = False
        return True

    def _apply(self, sampler: int) -> None:
        if sampler:
            assert self._candidates is not None
            C.llama_sampler_apply(sampler, ctypes.byref(self._candidates.array))

    def _grammar_allows(self, token: int) -> bool:
        one = self._one
        one[0].id, one[0].logit, one[0].p = token, 0.0, 0.0
        array = C.llama_token_data_array(one, 1, -1, False)
        C.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return bool(math.isfinite(one[0].logit))

    def free(self) -> None:
        """Release the C samplers; idempotent."""
        for name in ("_chain", "_shape", "_grammar"):
            handle = getattr(self, name)
            if handle:
                C.llama_sampler_free(handle)
                setattr(self, name, 0)


def _only_biased(params: SamplerParams) -> bool:
    """True if the only stage that reshapes the logits is a logit bias (or there is none)."""
    penalties = params.repeat_penalty != 1.0 or params.frequency_penalty or params.presence_penalty
    return not penalties and params.dry_multiplier <= 0


def _bias_arrays(pairs: tuple[tuple[int, float], ...]) -> tuple[Any, Any] | None:
    """A logit bias as (token ids, biases) arrays, None without one; ids outside the vocabulary were refused."""
    if not pairs:
        return None
    return np.array([t for t, _ in pairs], dtype=np.int64), np.array([b for _, b in pairs], dtype=np.float32)


def _grammar(text: str, vocab: int, n_vocab: int) -> int:
    """The grammar sampler; `GrammarError` if llama.cpp cannot parse it or it accepts no first token."""
    grammar = C.llama_sampler_init_grammar(vocab, text.encode(), b"root")
    if not grammar:
        raise GrammarError("the grammar is not valid GBNF with a 'root' rule")
    probe = Candidates(n_vocab)
    probe.fill_uniform()
    C.llama_sampler_apply(grammar, ctypes.byref(probe.array))
    if not probe.any_allowed():
        C.llama_sampler_free(grammar)
        raise GrammarError("the grammar accepts no first token: no output can match it")
    return grammar  # type: ignore[no-any-return]


def _top(dist: Any, k: int) -> tuple[tuple[int, float], ...]:
    """The k most likely (token, log probability) pairs of `dist`, most likely first."""
    if k <= 0:
        return ()
    k = min(k, len(dist))
    best = np.argpartition(-dist, k - 1)[:k]
    best = best[np.argsort(-dist[best], kind="stable")]
    return tuple((int(i), float(dist[i])) for i in best if np.isfinite(dist[i]))


def _chain(stages: list[int]) -> int:
    chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    for stage in stages:
        C.llama_sampler_chain_add(chain, stage)  # the chain owns it from here
    return chain  # type: ignore[no-any-return]


def _stages(params: SamplerParams, *, vocab: int, n_vocab: int, n_ctx: int) -> tuple[list[int], list[int]]:
    """The chain's stages in llama.cpp's usual order (after the grammar), off ones left out: (shaping, picking)."""
    seed = _RANDOM_SEED if params.seed is None else params.seed
    stages: list[int] = []
    if params.logit_bias:
        stages.append(_logit_bias(params, n_vocab))
    last_n = n_ctx if params.repeat_last_n == -1 else params.repeat_last_n
    if params.repeat_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
        stages.append(
            C.llama_sampler_init_penalties(
                n_vocab,
                last_n,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
        )
    if params.dry_multiplier > 0:
        stages.append(_dry(params, vocab=vocab, n_ctx=n_ctx))
    shaping, stages = stages, []
    if params.greedy or params.temperature == 0:
        stages.append(C.llama_sampler_init_greedy())
    elif params.mirostat == 1:
        stages.append(C.llama_sampler_init_temp(params.temperature))
        stages.append(
            C.llama_sampler_init_mirostat(n_vocab, seed, params.mirostat_tau, params.mirostat_eta, _MIROSTAT_M)
        )
    elif params.mirostat == 2:
        stages.append(C.llama_sampler_init_temp(params.temperature))
        stages.append(C.llama_sampler_init_mirostat_v2(seed, params.mirostat_tau, params.mirostat_eta))
    else:
        stages.extend(_truncation(params, seed))
        stages.append(C.llama_sampler_init_temp(params.temperature))
        stages.append(C.llama_sampler_init_dist(seed))
    return shaping, stages


def _truncation(params: SamplerParams, seed: int) -> list[int]:
    stages = []
    if params.top_k > 0:
        stages.append(C.llama_sampler_init_top_k(params.top_k))
    if params.typical_p < 1.0:
        stages.append(C.llama_sampler_init_typical(params.typical_p, 1))
    if params.top_p < 1.0:
        stages.append(C.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        stages.append(C.llama_sampler_init_min_p(params.min_p, 1))
    if params.xtc_probability > 0.0:
        stages.append(C.llama_sampler_init_xtc(params.xtc_probability, params.xtc_threshold, 1, seed))
    return stages


def _logit_bias(params: SamplerParams, n_vocab: int) -> int:
    pairs = list(params.logit_bias)
    outside = [token for token, _ in pairs if not 0 <= token < n_vocab]
    if outside:
        raise SamplerRefused(f"logit_bias names token {outside[0]}, outside the vocabulary (0..{n_vocab - 1})")
    array = (C.llama_logit_bias * len(pairs))(*(C.llama_logit_bias(token, bias) for token, bias in pairs))
    return C.llama_sampler_init_logit_bias(n_vocab, len(pairs), array)  # type: ignore[no-any-return]


def _dry(params: SamplerParams, *, vocab: int, n_ctx: int) -> int:
    breakers = [b.encode() for b in params.dry_sequence_breakers]
    array = (ctypes.c_char_p * len(breakers))(*breakers)
    last_n = n_ctx if params.dry_penalty_last_n == -1 else params.dry_penalty_last_n
    return C.llama_sampler_init_dry(  # type: ignore[no-any-return]
        vocab,
        params.dry_multiplier,
        params.dry_base,
        params.dry_allowed_length,
        last_n,
        array,
        len(breakers),
    )
