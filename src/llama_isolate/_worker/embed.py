"""Embeddings: one text, decoded alone in the sequence kept free for it, pooled by llama.cpp."""

from __future__ import annotations

import math

import llama_cpp as C

from .. import _protocol as protocol
from .abort import AbortFlag
from .batch import Batch
from .bounds import PromptBounds, TooBig
from .llama import LoadedModel
from .threads import ThreadTuner
from .vocab import Vocab


class EmbeddingRefused(Exception):
    """The text cannot be embedded (empty, too long, or the load has no embeddings)."""

    def __init__(self, message: str, kind: protocol.ErrorKind = "request") -> None:
        super().__init__(message)
        self.kind: protocol.ErrorKind = kind


class Embedder:
    """Computes pooled embeddings between decode steps, in its own sequence."""

    def __init__(
        self,
        handles: LoadedModel,
        vocab: Vocab,
        batch: Batch | None,
        abort: AbortFlag,
        tuner: ThreadTuner,
        *,
        seq_id: int,
        limit: int,
        bounds: PromptBounds,
    ) -> None:
        self._handles = handles
        self._bounds = bounds
        self._vocab = vocab
        self._batch = batch
        self._abort = abort
        self._tuner = tuner
        self._seq = seq_id
        self._limit = limit  # tokens one decode can pool: min(n_ubatch, n_ctx)
        self._memory = C.llama_get_memory(handles.ctx) if handles.ctx else None

    def embed(self, text: str, normalize: bool) -> tuple[tuple[float, ...], int]:
        """The pooled embedding of `text` and its token count; raises `EmbeddingRefused`."""
        if not self._handles.pooling or self._batch is None:
            raise EmbeddingRefused(
                "embeddings need LlamaLoad(context_params=ContextParams(embeddings=True))", "feature"
            )
        too_long = f"at most {self._limit} tokens can be embedded at once (raise ContextParams.n_batch and n_ubatch)"
        try:
            self._bounds.check_text(text, self._limit)  # before tokenizing megabytes
        except TooBig as exc:
            raise EmbeddingRefused(f"{exc}: {too_long}", "too_long") from None
        tokens = self._vocab.tokenize(text, add_special=True, parse_special=False)
        if not tokens:
            raise EmbeddingRefused("cannot embed an empty text")
        if len(tokens) > self._limit:
            raise EmbeddingRefused(f"the text is {len(tokens)} tokens; {too_long}", "too_long")
        ctx, model = self._handles.ctx, self._handles.model
        self._batch.fill([(tok, i, self._seq, True) for i, tok in enumerate(tokens)])
        C.llama_set_embeddings(ctx, True)
        try:
            rc = self._decode_unaborted()
            vector = C.llama_get_embeddings_seq(ctx, self._seq) if rc == 0 else None
            n_out = C.llama_model_n_embd_out(model) or C.llama_model_n_embd(model)
            values = tuple(float(v) for v in vector[:n_out]) if vector else ()
        finally:
            C.llama_set_embeddings(ctx, False)
            C.llama_memory_seq_rm(self._memory, self._seq, -1, -1)
        if not values:
            raise EmbeddingRefused(f"llama.cpp returned no embedding (decode returned {rc})")
        return (_normalized(values) if normalize else values), len(tokens)

    def _decode_unaborted(self) -> int:
        # A stop meant for a prompt must not abort an embedding; the flag is
        # restored so the next step still sees it. The thread count is the
        # tuner's, as for a step: two threads beside a busy process crawl.
        assert self._batch is not None
        ctx, batch = self._handles.ctx, self._batch.handle
        was_set = self._abort.is_set()
        self._abort.clear()
        try:
            return self._tuner.run(lambda: int(C.llama_decode(ctx, batch)))
        finally:
            if was_set:
                self._abort.set()


def _normalized(values: tuple[float, ...]) -> tuple[float, ...]:
    norm = math.sqrt(sum(v * v for v in values))
    return values if norm == 0 else tuple(v / norm for v in values)
