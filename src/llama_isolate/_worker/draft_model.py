"""A draft model for speculative decoding: a smaller model with the target's vocabulary, in the same worker.

It keeps a KV cache per sequence of the target's, holding the tokens it last
saw there; asked for a draft, it reads only what is new since (a turn, the
tokens the target kept), then guesses greedily, one token per decode. Its
guesses only decide what the target checks: what the reply says is always the
target's (see `speculate`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp as C
import numpy as np

from .._params import ContextParams
from .abort import AbortFlag
from .cache import common_prefix
from .llama import LlamaLog, LoadedModel, LoadFailure, check_model_file

logger = logging.getLogger("llama_isolate.worker")

_SAME_TEXT_FROM = 5  # token ids below this (control tokens) may differ in text between sizes of one family


class DraftModel:
    """The draft model's weights and context, with one KV sequence per target sequence.

    Example::

        draft = DraftModel.load("small.gguf", target=handles.model, context=cp, log=log)
        draft.propose(seq_id=0, tokens=slot.tokens, next_token=t, limit=8)
    """

    def __init__(self, model: int, ctx: int, n_seq: int, n_batch: int) -> None:
        self._handles = LoadedModel(model, ctx, pooling=False)
        self._ctx = ctx
        self.guess_s = 0.0  # seconds per guessed token (one decode of one token), measured at load and as it runs
        self._vocab = C.llama_model_get_vocab(model)
        self._n_vocab = int(C.llama_vocab_n_tokens(self._vocab))
        self._memory = C.llama_get_memory(ctx)
        self._held: list[list[int]] = [[] for _ in range(n_seq)]  # the tokens in each sequence's KV
        self._n_batch = n_batch
        self._batch = C.llama_batch_init(n_batch, 0, 1)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, target: int, context: ContextParams, log: LlamaLog, abort: AbortFlag
    ) -> DraftModel:
        """Load the draft beside `target`; raises `LoadFailure` naming what is wrong (a vocabulary unlike the
        target's included). A stop sets `abort`, which interrupts the draft's decodes as it does the target's."""
        where = os.fspath(path)
        check_model_file(where, "draft model file")
        model = C.llama_model_load_from_file(where.encode(), C.llama_model_default_params())
        if not model:
            raise LoadFailure("invalid_model", f"llama.cpp could not load the draft model {where}: {log.last(1)}")
        try:
            mismatch = vocabulary_mismatch(target, model)
            if mismatch:
                raise LoadFailure(
                    "invalid_model",
                    f"the draft model {where} cannot draft for this model: {mismatch} "
                    "(a draft must share the model's vocabulary, as a smaller model of the same family does)",
                )
            params = C.llama_context_default_params()
            params.n_seq_max = context.n_parallel
            params.n_ctx = context.n_ctx * context.n_parallel
            params.n_batch = params.n_ubatch = context.n_batch
            params.n_threads = context.n_threads
            params.n_threads_batch = context.n_threads_batch
            params.kv_unified = False
            params.no_perf = True
            ctx = C.llama_init_from_model(model, params)
            if not ctx:
                raise LoadFailure(
                    "out_of_memory", f"llama.cpp could not create the draft model's context: {log.last(1)}"
                )
        except BaseException:
            C.llama_model_free(model)
            raise
        abort.install(ctx)
        draft = cls(model, ctx, context.n_parallel, context.n_batch)
        draft.guess_s = draft._time_one_decode()
        return draft

    def _time_one_decode(self) -> float:
        """Seconds the draft takes to decode one token (timed once at load, as the plan's first estimate)."""
        held: list[int] = []
        began = time.perf_counter()
        self._decode(0, held, [int(C.llama_vocab_bos(self._vocab))])
        took = time.perf_counter() - began
        C.llama_memory_seq_rm(self._memory, 0, -1, -1)
        return took

    def propose(self, seq_id: int, tokens: Sequence[int], next_token: int, limit: int) -> list[int]:
        """Up to `limit` tokens the draft expects after `tokens` + [`next_token`], in target sequence `seq_id`."""
        want = [*tokens, next_token]
        held = self._held[seq_id]
        keep = min(common_prefix(held, want), len(want) - 1)  # the last token is decoded again for its logits
        if keep < len(held):
            C.llama_memory_seq_rm(self._memory, seq_id, keep, -1)
            del held[keep:]
        feed = want[keep:]
        if any(t < 0 or t >= self._n_vocab for t in feed):  # an image's positions: nothing this draft can read
            C.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
            held.clear()
            return []
        draft: list[int] = []
        if not self._decode(seq_id, held, feed):
            return []
        while len(draft) < limit:
            logits = C.llama_get_logits_ith(self._ctx, -1)
            token = int(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())
            if C.llama_vocab_is_eog(self._vocab, token):
                break
            draft.append(token)
            if len(draft) == limit:
                break
            began = time.perf_counter()
            if not self._decode(seq_id, held, [token]):
                break
            self.guess_s += 0.1 * (time.perf_counter() - began - self.guess_s)
        return draft

    def _decode(self, seq_id: int, held: list[int], tokens: list[int]) -> bool:
        """Append `tokens` to the sequence, with logits for the last; False (and the sequence emptied) on failure."""
        for start in range(0, len(tokens), self._n_batch):
            part = tokens[start : start + self._n_batch]
            batch = self._batch
            for i, token in enumerate(part):
                batch.token[i] = token
                batch.pos[i] = len(held) + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq_id
                batch.logits[i] = i == len(part) - 1
            batch.n_tokens = len(part)
            if C.llama_decode(self._ctx, batch) != 0:
                C.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
                held.clear()
                return False
            held.extend(part)
        return True

    def close(self) -> None:
        """Free the draft's context and weights; idempotent."""
        if self._batch is not None:
            C.llama_batch_free(self._batch)
            self._batch = None
        self._handles.close()


@dataclass(frozen=True)
class ModelDrafter:
    """The `Drafter` of one target sequence: its draft model's sequence of the same id."""

    model: DraftModel
    seq_id: int

    @property
    def guess_s(self) -> float:
        return self.model.guess_s

    def propose(self, tokens: Sequence[int], next_token: int, limit: int) -> list[int]:
        return self.model.propose(self.seq_id, tokens, next_token, limit)


def vocabulary_mismatch(target: int, draft: int) -> str | None:
    """How the draft's vocabulary differs from the target's, or None if it is the same."""
    ours, theirs = C.llama_model_get_vocab(target), C.llama_model_get_vocab(draft)
    if C.llama_vocab_type(ours) != C.llama_vocab_type(theirs):
        return "its tokenizer is of another type"
    n, m = int(C.llama_vocab_n_tokens(ours)), int(C.llama_vocab_n_tokens(theirs))
    if n != m:
        return f"it has {m} tokens, the model {n}"
    for name in ("llama_vocab_bos", "llama_vocab_eos"):
        if getattr(C, name)(ours) != getattr(C, name)(theirs):
            return f"its {name.rsplit('_', 1)[1].upper()} token differs"
    for token in range(_SAME_TEXT_FROM, n):
        a, b = C.llama_vocab_get_text(ours, token), C.llama_vocab_get_text(theirs, token)
        if a != b:
            return f"token {token} is {(b or b'').decode(errors='replace')!r} in it, not what the model has"
    return None
