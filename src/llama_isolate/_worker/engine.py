"""The engine: a scheduler over llama.cpp sequence slots.

Each running prompt owns one sequence id (a slot). One `step()` builds one
`llama_batch` with the next token of every generating sequence and a chunk of
prompt tokens of sequences still reading their prompt, runs one
`llama_decode`, and samples a token for every sequence that asked for logits.
With `n_parallel=1` there is one slot, so prompts run strictly one at a time in
the order they arrive (the seed's FIFO).

A step is a transaction: a sequence advances only when its decode succeeded.
When the decode was aborted (a stop), every sequence in the batch is rolled
back to where it was, the stop is applied, and the others carry on next step.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp as C

from .. import _protocol as protocol
from .._params import LlamaLoad
from .abort import AbortFlag
from .chat import ChatFormatter, ChatTemplateError
from .llama import LlamaLog, LoadedModel, LoadFailure, load_model, model_description
from .sampling import GrammarError, build_sampler
from .text import Detokenizer

logger = logging.getLogger("llama_isolate.worker")

_DECODE_ABORTED = 2
_DECODE_NO_KV_SLOT = 1


class RequestFailure(Exception):
    """A request the engine refused; sent up as `RequestFailed`."""

    def __init__(self, kind: protocol.ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(eq=False)
class _Sequence:
    """One running prompt in one slot."""

    request: protocol.Submit
    seq_id: int
    pending: collections.deque[int]  # prompt tokens not decoded yet
    n_prompt: int
    sampler: int
    detok: Detokenizer
    n_past: int = 0
    generated: int = 0
    next_token: int | None = None  # sampled, to be decoded next step
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    # this step's share of the batch:
    batch_pos: int = 0
    batch_count: int = 0
    logits_index: int = -1


class Engine:
    """Owns the model, the context, the slots and the queue of admitted prompts."""

    def __init__(self, load: LlamaLoad, emit: Callable[[protocol.Reply], None]) -> None:
        self._load = load
        self._emit = emit
        self._log = LlamaLog(load.verbose)
        self._handles: LoadedModel = load_model(load, self._log)
        cp = load.context_params
        self._n_parallel = cp.n_parallel
        self._n_batch = cp.n_batch
        self._n_ubatch = cp.n_ubatch
        self._n_ctx = cp.n_ctx
        self._vocab = self._handles.vocab
        self._n_vocab = C.llama_vocab_n_tokens(self._vocab)
        self._slots: list[_Sequence | None] = [None] * self._n_parallel
        self._waiting: collections.deque[protocol.Submit] = collections.deque()
        self._pieces: dict[int, bytes] = {}
        self._abort = AbortFlag()
        try:
            self._chat = self._formatter(load)
        except ChatTemplateError as exc:
            self._handles.close()
            raise LoadFailure("invalid_template", str(exc)) from exc
        self._batch: C.llama_batch | None = None
        if self._handles.ctx:
            self._batch = C.llama_batch_init(self._n_batch, 0, 1)
            self._memory = C.llama_get_memory(self._handles.ctx)
            self._abort.install(self._handles.ctx)

    # ------------------------------------------------------------ facts

    def info(self) -> protocol.ModelInfo:
        model = self._handles.model
        return protocol.ModelInfo(
            description=model_description(model),
            n_params=int(C.llama_model_n_params(model)),
            size_bytes=int(C.llama_model_size(model)),
            n_ctx=self._n_ctx,
            n_ctx_train=int(C.llama_model_n_ctx_train(model)),
            n_embd=int(C.llama_model_n_embd(model)),
            n_vocab=self._n_vocab,
            has_chat_template=self._chat.has_template,
        )

    @property
    def busy(self) -> bool:
        """True while a prompt is waiting or running."""
        return bool(self._waiting) or any(self._slots)

    @property
    def abort_flag(self) -> AbortFlag:
        return self._abort

    # ------------------------------------------------------------ commands

    def submit(self, request: protocol.Submit) -> None:
        self._waiting.append(request)

    def cancel(self, prompt_ids: tuple[str, ...], reason: str) -> None:
        """End these prompts with `reason`, running or still waiting; unknown ids are ignored."""
        wanted = set(prompt_ids)
        for seq in self._slots:
            if seq is not None and seq.request.prompt_id in wanted:
                self._finish(seq, reason)
        for request in [r for r in self._waiting if r.prompt_id in wanted]:
            self._waiting.remove(request)
            self._emit(protocol.Finished(request.prompt_id, reason, None, 0, 0, 0.0, 0.0))  # type: ignore[arg-type]

    def drop_scope(self, scope_key: str) -> None:
        """Nothing is kept per scope between prompts yet; each prompt starts its slot afresh."""

    def close(self) -> None:
        for seq in self._slots:
            if seq is not None:
                self._finish(seq, "cancelled")
        if self._batch is not None:
            C.llama_batch_free(self._batch)
            self._batch = None
        self._handles.close()

    # ------------------------------------------------------------ embeddings

    def embed(self, text: str, normalize: bool) -> tuple[float, ...]:
        """The pooled embedding of `text`; raises `RequestFailure`."""
        if not self._handles.pooling or self._batch is None:
            raise RequestFailure("feature", "embeddings need LlamaLoad(context_params=ContextParams(embeddings=True))")
        tokens = self._tokenize(text, add_special=True, parse_special=False)
        if not tokens:
            raise RequestFailure("request", "cannot embed an empty text")
        limit = min(self._n_ubatch, self._n_ctx)
        if len(tokens) > limit:
            raise RequestFailure(
                "request",
                f"the text is {len(tokens)} tokens; at most {limit} can be embedded at once "
                "(raise ContextParams.n_batch and n_ubatch)",
            )
        seq_id = self._n_parallel  # the sequence kept free for embeddings
        ctx = self._handles.ctx
        self._fill(self._batch, [(tok, i, seq_id, True) for i, tok in enumerate(tokens)])
        C.llama_set_embeddings(ctx, True)
        try:
            rc = self._decode_unaborted()
            vector = C.llama_get_embeddings_seq(ctx, seq_id) if rc == 0 else None
            n_out = C.llama_model_n_embd_out(self._handles.model) or C.llama_model_n_embd(self._handles.model)
            values = tuple(float(v) for v in vector[:n_out]) if vector else ()
        finally:
            C.llama_set_embeddings(ctx, False)
            C.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        if not values:
            raise RequestFailure("request", f"llama.cpp returned no embedding (decode returned {rc})")
        return _normalized(values) if normalize else values

    def _decode_unaborted(self) -> int:
        # A stop meant for a prompt must not abort an embedding; the flag is
        # still seen by the next step, because it is only cleared by the loop.
        was_set = self._abort.is_set()
        self._abort.clear()
        try:
            return int(C.llama_decode(self._handles.ctx, self._batch))
        finally:
            if was_set:
                self._abort.set()

    # ------------------------------------------------------------ the step

    def step(self) -> None:
        """Admit waiting prompts into free slots, then decode one batch and sample."""
        self._admit()
        active = [seq for seq in self._slots if seq is not None]
        if not active or self._batch is None:
            return
        scheduled = self._schedule(active)
        rc = int(C.llama_decode(self._handles.ctx, self._batch))
        if rc == _DECODE_ABORTED:
            self._roll_back(scheduled)
        elif rc != 0:
            self._roll_back(scheduled)
            self._fail_batch(scheduled, rc)
        else:
            self._advance(scheduled)

    def _admit(self) -> None:
        for seq_id in range(self._n_parallel):
            while self._slots[seq_id] is None and self._waiting:
                self._slots[seq_id] = self._start(self._waiting.popleft(), seq_id)

    def _start(self, request: protocol.Submit, seq_id: int) -> _Sequence | None:
        self._emit(protocol.Started(request.prompt_id))
        if self._batch is None:
            self._refuse(request, "the model was loaded with vocab_only=True; it cannot generate")
            return None
        try:
            tokens = self._prompt_tokens(request.messages)
            sampler = build_sampler(request.sampler, vocab=self._vocab, n_vocab=self._n_vocab, n_ctx=self._n_ctx)
        except (ChatTemplateError, GrammarError) as exc:
            self._refuse(request, str(exc))
            return None
        if len(tokens) >= self._n_ctx:
            C.llama_sampler_free(sampler)
            self._refuse(
                request,
                f"the prompt is {len(tokens)} tokens with its conversation, but the context holds "
                f"{self._n_ctx} (ContextParams.n_ctx); at least {len(tokens) + 1} are needed",
                n_prompt=len(tokens),
            )
            return None
        C.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        return _Sequence(
            request=request,
            seq_id=seq_id,
            pending=collections.deque(tokens),
            n_prompt=len(tokens),
            sampler=sampler,
            detok=Detokenizer(request.sampler.stop),
        )

    def _schedule(self, active: list[_Sequence]) -> list[_Sequence]:
        """Fill the batch: generating sequences first (one token each), then prompt chunks."""
        entries: list[tuple[int, int, int, bool]] = []
        scheduled: list[_Sequence] = []
        for seq in active:
            seq.batch_pos, seq.batch_count, seq.logits_index = seq.n_past, 0, -1
            if seq.next_token is not None:
                seq.logits_index = len(entries)
                entries.append((seq.next_token, seq.n_past, seq.seq_id, True))
                seq.batch_count = 1
                scheduled.append(seq)
        for seq in active:
            room = self._n_batch - len(entries)
            if seq.next_token is not None or not seq.pending or room <= 0:
                continue
            count = min(room, len(seq.pending))
            last = count == len(seq.pending)
            for i in range(count):
                is_last = last and i == count - 1
                entries.append((seq.pending[i], seq.n_past + i, seq.seq_id, is_last))
            seq.batch_count = count
            seq.logits_index = len(entries) - 1 if last else -1
            scheduled.append(seq)
        assert self._batch is not None
        self._fill(self._batch, entries)
        return scheduled

    @staticmethod
    def _fill(batch: C.llama_batch, entries: list[tuple[int, int, int, bool]]) -> None:
        for i, (token, pos, seq_id, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = logits
        batch.n_tokens = len(entries)

    def _roll_back(self, scheduled: list[_Sequence]) -> None:
        # An aborted or failed decode may leave some ubatches in the KV cache.
        for seq in scheduled:
            C.llama_memory_seq_rm(self._memory, seq.seq_id, seq.batch_pos, -1)

    def _fail_batch(self, scheduled: list[_Sequence], rc: int) -> None:
        if rc == _DECODE_NO_KV_SLOT:
            reason = "the KV cache is full (no free slot for the batch); try a larger ContextParams.n_ctx"
        else:
            reason = f"llama_decode failed with code {rc} ({self._log.last(1) or 'no detail'})"
        for seq in scheduled:
            self._finish(seq, "error", error=reason)

    def _advance(self, scheduled: list[_Sequence]) -> None:
        for seq in scheduled:
            seq.n_past += seq.batch_count
            if seq.next_token is not None:
                seq.next_token = None
            else:
                for _ in range(seq.batch_count):
                    seq.pending.popleft()
            if seq.logits_index >= 0:
                self._sample(seq)

    def _sample(self, seq: _Sequence) -> None:
        token = int(C.llama_sampler_sample(seq.sampler, self._handles.ctx, seq.logits_index))
        now = time.perf_counter()
        if seq.first_token is None:
            seq.first_token = now
        if C.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop")
            return
        seq.generated += 1
        text, stopped = seq.detok.feed(self._piece(token))
        if text:
            self._emit(protocol.Tokens(seq.request.prompt_id, text))
        if stopped:
            self._finish(seq, "stop", flush=False)
        elif seq.generated == seq.request.max_tokens or seq.n_past + 1 >= self._n_ctx:
            self._finish(seq, "length")
        else:
            seq.next_token = token

    def _finish(self, seq: _Sequence, reason: str, *, error: str | None = None, flush: bool = True) -> None:
        if flush and error is None:
            rest = seq.detok.flush()
            if rest:
                self._emit(protocol.Tokens(seq.request.prompt_id, rest))
        C.llama_sampler_free(seq.sampler)
        self._slots[seq.seq_id] = None
        end = time.perf_counter()
        first = seq.first_token or end
        self._emit(
            protocol.Finished(
                prompt_id=seq.request.prompt_id,
                finish_reason=reason,  # type: ignore[arg-type]
                error=error,
                prompt_tokens=seq.n_prompt - len(seq.pending),
                completion_tokens=seq.generated,
                prompt_eval_s=first - seq.started,
                generation_s=end - first,
            )
        )

    def _refuse(self, request: protocol.Submit, error: str, *, n_prompt: int = 0) -> None:
        self._emit(protocol.Finished(request.prompt_id, "error", error, n_prompt, 0, 0.0, 0.0))

    # ------------------------------------------------------------ text

    def _formatter(self, load: LlamaLoad) -> ChatFormatter:
        model = self._handles.model
        template = load.chat_template
        if template is None:
            own = C.llama_model_chat_template(model, None)
            template = own.decode("utf-8", "replace") if own else None
        return ChatFormatter(
            template,
            bos_token=self._token_text(C.llama_vocab_bos(self._vocab)),
            eos_token=self._token_text(C.llama_vocab_eos(self._vocab)),
        )

    def _prompt_tokens(self, messages: tuple[tuple[str, str], ...]) -> list[int]:
        text = self._chat.render(messages)
        if not self._chat.has_template:
            return self._tokenize(text, add_special=True, parse_special=False)
        bos = self._token_text(C.llama_vocab_bos(self._vocab))
        if bos and C.llama_vocab_get_add_bos(self._vocab) and text.startswith(bos):
            text = text[len(bos) :]  # the tokenizer adds it; do not have it twice
        return self._tokenize(text, add_special=True, parse_special=True)

    def _tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            buf = (C.llama_token * capacity)()
            n = C.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            capacity = -n

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = self._pieces[token] = buf.raw[:n]
        return piece

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return (C.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", "replace")


def _normalized(values: tuple[float, ...]) -> tuple[float, ...]:
    norm = math.sqrt(sum(v * v for v in values))
    return values if norm == 0 else tuple(v / norm for v in values)
