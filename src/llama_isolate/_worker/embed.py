"""Embeddings: one text, decoded alone in the sequence kept free for it, pooled by llama.cpp."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass
class Embedder:
    """Computes pooled embeddings between decode steps, in its own sequence (`seq_id`)."""

    handles: LoadedModel
    vocab: Vocab
    batch: Batch | None
    abort: AbortFlag
    tuner: ThreadTuner
    seq_id: int
    limit: int  # tokens one decode can pool: min(n_ubatch, n_ctx)
    bounds: PromptBounds

    def __post_init__(self) -> None:
        self._memory = C.llama_get_memory(self.handles.ctx) if self.handles.ctx else None

    def embed(self, text: str, normalize: bool) -> tuple[tuple[float, ...], int]:
        """The pooled embedding of `text` and its token count; raises `EmbeddingRefused`."""
        if not self.handles.pooling or self.batch is None:
            raise EmbeddingRefused(
                "embeddings need LlamaLoad(context_params=ContextParams(embeddings=True))", "feature"
            )
        too_long = f"at most {self.limit} tokens can be embedded at once (raise ContextParams.n_batch and n_ubatch)"
        try:
            self.bounds.check_text(text, self.limit)  # before tokenizing megabytes
        except TooBig as exc:
            raise EmbeddingRefused(f"{exc}: {too_long}", "too_long") from None
        tokens = self.vocab.tokenize(text, add_special=True, parse_special=False)
        if not tokens:
            raise EmbeddingRefused("cannot embed an empty text")
        if len(tokens) > self.limit:
            raise EmbeddingRefused(f"the text is {len(tokens)} tokens; {too_long}", "too_long")
        ctx, model = self.handles.ctx, self.handles.model
        self.batch.fill([(tok, i, self.seq_id, True) for i, tok in enumerate(tokens)])
        C.llama_set_embeddings(ctx, True)
        try:
            rc = self._decode_unaborted()
            vector = C.llama_get_embeddings_seq(ctx, self.seq_id) if rc == 0 else None
            n_out = C.llama_model_n_embd_out(model) or C.llama_model_n_embd(model)
            values = tuple(float(v) for v in vector[:n_out]) if vector else ()
        finally:
            C.llama_set_embeddings(ctx, False)
            C.llama_memory_seq_rm(self._memory, self.seq_id, -1, -1)
        if not values:
            raise EmbeddingRefused(f"llama.cpp returned no embedding (decode returned {rc})")
        return (_normalized(values) if normalize else values), len(tokens)

    def _decode_unaborted(self) -> int:
        # A stop meant for a prompt must not abort an embedding; the flag is
        # restored so the next step still sees it. The thread count is the
        # tuner's, as for a step: two threads beside a busy process crawl.
        assert self.batch is not None
        ctx, batch = self.handles.ctx, self.batch.handle
        was_set = self.abort.is_set()
        self.abort.clear()
        try:
            return self.tuner.run(lambda: int(C.llama_decode(ctx, batch)))
        finally:
            if was_set:
                self.abort.set()


def _normalized(values: tuple[float, ...]) -> tuple[float, ...]:
    norm = math.sqrt(sum(v * v for v in values))
    return values if norm == 0 else tuple(v / norm for v in values)
