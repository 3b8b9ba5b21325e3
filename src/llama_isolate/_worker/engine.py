"""The engine: continuous batching over llama.cpp sequence slots.

There are `n_parallel` slots, each one llama.cpp sequence id. A prompt is
admitted into a free slot, preferably the one that already holds its
conversation's KV cache; only the tokens past the shared prefix are decoded.

One `step()` builds one `llama_batch` with the next token of every generating
sequence plus a chunk of prompt tokens of sequences still reading their prompt,
runs one `llama_decode`, and samples a token for every sequence that asked for
logits. With `n_parallel=1` there is one slot, so prompts run strictly one at a
time in the order they arrive (the seed's FIFO).

A step is a transaction: a sequence advances only when its decode succeeded.
When the decode was aborted (a stop), every sequence in the batch is rolled
back to where it was, the stop is applied, and the others carry on next step.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp as C

from .. import _protocol as protocol
from .._params import LlamaLoad
from .abort import AbortFlag
from .cache import HostCache, ParkedState, Slot, common_prefix, copy_in, copy_out
from .chat import ChatTemplateError
from .fit import ContextFitter, Encode
from .llama import LlamaLog, LoadedModel, LoadFailure, load_model, model_description
from .prompt import ImageChunk, Item, Prompt
from .sampling import GrammarError, build_sampler
from .text import Detokenizer
from .vision import ImageError, Vision
from .vocab import Vocab

logger = logging.getLogger("llama_isolate.worker")

_DECODE_ABORTED = 2
_DECODE_NO_KV_SLOT = 1
# While other sequences generate, a new prompt is read in chunks this small, so
# their next tokens are never more than one short chunk away.
_PROMPT_CHUNK_WHILE_GENERATING = 64


class RequestFailure(Exception):
    """A request the engine refused; sent up as `RequestFailed`."""

    def __init__(self, kind: protocol.ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(eq=False)
class _Running:
    """One prompt being processed in one slot."""

    request: protocol.Submit
    slot: Slot
    prompt: Prompt  # owns the mtmd chunks that image items point into
    pending: collections.deque[Item]  # prompt tokens and images not decoded yet
    n_prompt: int  # prompt positions to process (after the cached prefix)
    n_cached: int  # prompt tokens reused from the slot's cache
    n_dropped: int  # oldest messages left out to fit the context
    sampler: int
    detok: Detokenizer
    generated: int = 0
    next_token: int | None = None  # sampled, to be decoded next step
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    # this step's share of the batch:
    batch_tokens: list[int] = field(default_factory=list)
    logits_index: int = -1

    @property
    def n_past(self) -> int:
        return len(self.slot.tokens)


class Engine:
    """Owns the model, the context, the slots and the prompts waiting for one."""

    def __init__(
        self,
        load: LlamaLoad,
        emit: Callable[[protocol.Reply], None],
        on_progress: Callable[[float], None] | None = None,
    ) -> None:
        self._emit = emit
        self._log = LlamaLog(load.verbose)
        self._handles: LoadedModel = load_model(load, self._log, on_progress)
        cp = load.context_params
        self._n_batch = cp.n_batch
        self._n_ubatch = cp.n_ubatch
        self._n_ctx = cp.n_ctx
        try:
            self._vocab = Vocab(self._handles.model, load.chat_template)
        except ChatTemplateError as exc:
            self._handles.close()
            raise LoadFailure("invalid_template", str(exc)) from exc
        self._fitter = ContextFitter(cp.n_ctx)
        self._vision: Vision | None = None
        if self._handles.mtmd:
            try:
                self._vision = Vision(self._handles.mtmd)
            except LoadFailure:
                self._handles.close()
                raise
        self._slots = [Slot(seq_id) for seq_id in range(cp.n_parallel)]
        self._embed_seq = cp.n_parallel  # the sequence kept free for embeddings
        self._running: dict[int, _Running] = {}  # by seq_id
        self._waiting: collections.deque[protocol.Submit] = collections.deque()
        self._parked = HostCache(cp.cache_ram_mib * 2**20)
        self._clock = itertools.count(1)
        self._abort = AbortFlag()
        self._batch: C.llama_batch | None = None
        if self._handles.ctx:
            self._batch = C.llama_batch_init(max(self._n_batch, cp.n_parallel), 0, 1)
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
            n_vocab=self._vocab.n_tokens,
            has_chat_template=self._vocab.chat.has_template,
        )

    @property
    def busy(self) -> bool:
        """True while a prompt is waiting or running."""
        return bool(self._waiting or self._running)

    @property
    def abort_flag(self) -> AbortFlag:
        return self._abort

    # ------------------------------------------------------------ commands

    def submit(self, request: protocol.Submit) -> None:
        self._waiting.append(request)

    def cancel(self, prompt_ids: tuple[str, ...], reason: str) -> None:
        """End these prompts with `reason`, running or still waiting; unknown ids are ignored."""
        wanted = set(prompt_ids)
        for run in [r for r in self._running.values() if r.request.prompt_id in wanted]:
            self._finish(run, reason)
        for request in [r for r in self._waiting if r.prompt_id in wanted]:
            self._waiting.remove(request)
            self._emit(protocol.Finished(request.prompt_id, reason, None, 0, 0, 0, 0, 0.0, 0.0))  # type: ignore[arg-type]

    def drop_scope(self, scope_key: str) -> None:
        """Forget the conversation's KV cache, in a slot or parked."""
        self._parked.pop(scope_key)
        self._fitter.forget(scope_key)
        for slot in self._slots:
            if slot.owner == scope_key and slot.seq_id not in self._running:
                self._clear(slot)

    def save_scope(self, scope_key: str) -> ParkedState:
        """The conversation's KV state (empty if it has none)."""
        for slot in self._slots:
            if slot.owner == scope_key and self._handles.ctx:
                return copy_out(self._handles.ctx, slot)
        parked = self._parked.pop(scope_key)
        if parked is None:
            return ParkedState((), b"")
        self._parked.put(scope_key, parked)
        return parked

    def load_scope(self, scope_key: str, state: ParkedState) -> None:
        """Make `state` the conversation's KV cache; raises `RequestFailure` if llama.cpp refuses it."""
        self.drop_scope(scope_key)
        if not state.tokens:
            return
        slot = self._free_slot(scope_key)
        if slot is None:  # every slot is busy: park it, it is checked when used
            self._parked.put(scope_key, state)
            return
        self._take(slot, scope_key)
        if not copy_in(self._handles.ctx, slot, state):
            self._clear(slot)
            raise RequestFailure(
                "request", "llama.cpp refused the saved state: it was made by another model or cache type"
            )

    def close(self) -> None:
        for run in list(self._running.values()):
            self._finish(run, "cancelled")
        if self._batch is not None:
            C.llama_batch_free(self._batch)
            self._batch = None
        self._handles.close()

    # ------------------------------------------------------------ embeddings

    def embed(self, text: str, normalize: bool) -> tuple[float, ...]:
        """The pooled embedding of `text`; raises `RequestFailure`."""
        if not self._handles.pooling or self._batch is None:
            raise RequestFailure("feature", "embeddings need LlamaLoad(context_params=ContextParams(embeddings=True))")
        tokens = self._vocab.tokenize(text, add_special=True, parse_special=False)
        if not tokens:
            raise RequestFailure("request", "cannot embed an empty text")
        limit = min(self._n_ubatch, self._n_ctx)
        if len(tokens) > limit:
            raise RequestFailure(
                "request",
                f"the text is {len(tokens)} tokens; at most {limit} can be embedded at once "
                "(raise ContextParams.n_batch and n_ubatch)",
            )
        ctx, seq = self._handles.ctx, self._embed_seq
        self._fill([(tok, i, seq, True) for i, tok in enumerate(tokens)])
        C.llama_set_embeddings(ctx, True)
        try:
            rc = self._decode_unaborted()
            vector = C.llama_get_embeddings_seq(ctx, seq) if rc == 0 else None
            n_out = C.llama_model_n_embd_out(self._handles.model) or C.llama_model_n_embd(self._handles.model)
            values = tuple(float(v) for v in vector[:n_out]) if vector else ()
        finally:
            C.llama_set_embeddings(ctx, False)
            C.llama_memory_seq_rm(self._memory, seq, -1, -1)
        if not values:
            raise RequestFailure("request", f"llama.cpp returned no embedding (decode returned {rc})")
        return _normalized(values) if normalize else values

    def _decode_unaborted(self) -> int:
        # A stop meant for a prompt must not abort an embedding; the flag is
        # restored so the next step still sees it.
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
        if not self._running or self._batch is None:
            return
        if not self._evaluate_images():
            return  # aborted: the stop is applied before anything else runs
        if not self._running:
            return
        scheduled = self._schedule()
        rc = int(C.llama_decode(self._handles.ctx, self._batch))
        if rc == _DECODE_ABORTED:
            self._roll_back(scheduled)
        elif rc != 0:
            self._roll_back(scheduled)
            self._fail_batch(scheduled, rc)
        else:
            self._advance(scheduled)

    def _admit(self) -> None:
        while self._waiting:
            request = self._waiting[0]
            slot = self._free_slot(request.scope_key)
            if slot is None:
                return
            self._waiting.popleft()
            self._start(request, slot)

    def _free_slot(self, owner: str) -> Slot | None:
        """The free slot to use for `owner`: its own, else an empty one, else the least recently used."""
        free = [s for s in self._slots if s.seq_id not in self._running]
        if not free:
            return None
        own = [s for s in free if s.owner == owner]
        return own[0] if own else min(free, key=lambda s: (s.owner is not None, s.last_used))

    def _take(self, slot: Slot, owner: str) -> None:
        """Give the slot to `owner`, parking the previous owner's state in RAM."""
        slot.last_used = next(self._clock)
        if slot.owner == owner:
            return
        if slot.owner is not None and slot.tokens:
            self._parked.put(slot.owner, copy_out(self._handles.ctx, slot))
        self._clear(slot)
        slot.owner = owner
        parked = self._parked.pop(owner)
        if parked is not None and not copy_in(self._handles.ctx, slot, parked):
            logger.warning("a parked conversation state did not load; its history is processed again")
            self._clear(slot)
            slot.owner = owner

    def _clear(self, slot: Slot) -> None:
        if self._handles.ctx:
            C.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        slot.tokens.clear()
        slot.owner = None

    def _start(self, request: protocol.Submit, slot: Slot) -> None:
        self._emit(protocol.Started(request.prompt_id))
        if self._batch is None:
            self._refuse(request, "the model was loaded with vocab_only=True; it cannot generate")
            return
        roles = [role for role, _ in request.messages]
        try:
            prompt, dropped = self._fitter.fit(request.scope_key, roles, request.max_tokens, self._encoder(request))
        except (ChatTemplateError, ImageError) as exc:
            self._refuse(request, str(exc))
            return
        if len(prompt) >= self._n_ctx:
            images = prompt.image_positions()
            prompt.free()
            self._refuse(
                request,
                f"the prompt needs {len(prompt) + 1} tokens (with its system messages"
                + (f" and {images} image tokens" if images else "")
                + f"; older turns already left out), but the context holds {self._n_ctx} (ContextParams.n_ctx)",
            )
            return
        try:
            sampler = build_sampler(
                request.sampler, vocab=self._vocab.handle, n_vocab=self._vocab.n_tokens, n_ctx=self._n_ctx
            )
        except GrammarError as exc:
            prompt.free()
            self._refuse(request, str(exc))
            return
        self._take(slot, request.scope_key)
        n_cached, pending = self._reuse_prefix(slot, prompt)
        self._running[slot.seq_id] = _Running(
            request=request,
            slot=slot,
            prompt=prompt,
            pending=collections.deque(pending),
            n_prompt=len(prompt) - n_cached,
            n_cached=n_cached,
            n_dropped=dropped,
            sampler=sampler,
            detok=Detokenizer(request.sampler.stop),
        )

    def _encoder(self, request: protocol.Submit) -> Encode:
        """Makes the prompt of the messages kept (by index), with their images if any."""

        def encode(kept: list[int]) -> Prompt:
            messages = tuple(request.messages[i] for i in kept)
            if not request.images:
                return Prompt(list(self._vocab.prompt_tokens(messages)))
            if self._vision is None:
                raise ImageError("image prompts need LlamaLoad(mmproj_path=...)")
            text, parse_special = self._vocab.prompt_text(messages)
            images = [image for i in kept for image in request.images[i]]
            return self._vision.tokenize(text, images, parse_special=parse_special)

        return encode

    def _reuse_prefix(self, slot: Slot, prompt: Prompt) -> tuple[int, list[Item]]:
        """Keep the cached positions the prompt starts with; returns how many, and the items left to do."""
        # At least one position must be decoded to get logits for the reply,
        # and an image is reused whole or not at all.
        keep = min(common_prefix(slot.tokens, prompt.flat()), len(prompt) - 1)
        pending: list[Item] = []
        position = 0
        for item in prompt.items:
            size = len(item.ids) if isinstance(item, ImageChunk) else 1
            if position + size > keep:
                if not pending:
                    keep = position
                pending.append(item)
            position += size
        if keep < len(slot.tokens):
            # A sliding-window or recurrent cache may not be cut part-way.
            if not C.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1) or not self._window_intact(slot, keep):
                C.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                keep, pending = 0, list(prompt.items)
            del slot.tokens[keep:]
        return keep, pending

    def _window_intact(self, slot: Slot, keep: int) -> bool:
        n_swa = C.llama_model_n_swa(self._handles.model)
        if n_swa <= 0 or keep == 0:
            return True
        return bool(int(C.llama_memory_seq_pos_min(self._memory, slot.seq_id)) <= max(0, keep - n_swa))

    def _evaluate_images(self) -> bool:
        """Encode and decode every image that is next in a prompt; False if a stop aborted it."""
        assert self._vision is not None or not any(
            r.pending and isinstance(r.pending[0], ImageChunk) for r in self._running.values()
        )
        for run in list(self._running.values()):
            while run.pending and isinstance(run.pending[0], ImageChunk):
                assert self._vision is not None
                image = run.pending[0]
                rc = self._vision.evaluate(
                    self._handles.ctx,
                    image,
                    n_past=run.n_past,
                    seq_id=run.slot.seq_id,
                    n_batch=self._n_batch,
                    last=len(run.pending) == 1,
                )
                if rc != 0:
                    C.llama_memory_seq_rm(self._memory, run.slot.seq_id, run.n_past, -1)
                    if rc == _DECODE_ABORTED:
                        return False
                    self._finish(run, "error", error=f"the image could not be evaluated (code {rc})")
                    break
                run.pending.popleft()
                run.slot.tokens.extend(image.ids)
                if not run.pending:  # the prompt ended with the image: its logits are the last ones
                    run.logits_index = -1
                    self._sample(run)
        return True

    def _schedule(self) -> list[_Running]:
        """Fill the batch: generating sequences first (one token each), then prompt chunks in FIFO order."""
        entries: list[tuple[int, int, int, bool]] = []
        scheduled: list[_Running] = []
        generating = [r for r in self._running.values() if r.next_token is not None]
        for run in generating:
            assert run.next_token is not None
            run.batch_tokens, run.logits_index = [run.next_token], len(entries)
            entries.append((run.next_token, run.n_past, run.slot.seq_id, True))
            scheduled.append(run)
        budget = self._n_batch - len(entries)
        if generating:
            budget = min(budget, _PROMPT_CHUNK_WHILE_GENERATING)
        for run in self._running.values():
            if run.next_token is not None or not run.pending or budget <= 0:
                continue
            chunk = _leading_tokens(run.pending, budget)
            if not chunk:
                continue  # an image comes next: evaluated at the start of the next step
            done = len(chunk) == len(run.pending)
            start = run.n_past
            entries.extend((tok, start + i, run.slot.seq_id, False) for i, tok in enumerate(chunk))
            if done:
                entries[-1] = (*entries[-1][:3], True)
            run.batch_tokens, run.logits_index = chunk, len(entries) - 1 if done else -1
            budget -= len(chunk)
            scheduled.append(run)
        self._fill(entries)
        return scheduled

    def _fill(self, entries: list[tuple[int, int, int, bool]]) -> None:
        batch = self._batch
        assert batch is not None
        for i, (token, pos, seq_id, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = logits
        batch.n_tokens = len(entries)

    def _roll_back(self, scheduled: list[_Running]) -> None:
        # An aborted or failed decode may leave some ubatches in the KV cache.
        for run in scheduled:
            C.llama_memory_seq_rm(self._memory, run.slot.seq_id, run.n_past, -1)

    def _fail_batch(self, scheduled: list[_Running], rc: int) -> None:
        if rc == _DECODE_NO_KV_SLOT:
            reason = "the KV cache is full (no free slot for the batch); try a larger ContextParams.n_ctx"
        else:
            reason = f"llama_decode failed with code {rc} ({self._log.last(1) or 'no detail'})"
        for run in scheduled:
            self._finish(run, "error", error=reason)

    def _advance(self, scheduled: list[_Running]) -> None:
        for run in scheduled:
            run.slot.tokens.extend(run.batch_tokens)
            if run.next_token is not None:
                run.next_token = None
            else:
                for _ in run.batch_tokens:
                    run.pending.popleft()
            if run.logits_index >= 0:
                self._sample(run)

    def _sample(self, run: _Running) -> None:
        token = int(C.llama_sampler_sample(run.sampler, self._handles.ctx, run.logits_index))
        if run.first_token is None:
            run.first_token = time.perf_counter()
        if self._vocab.is_end_of_generation(token):
            self._finish(run, "stop")
            return
        run.generated += 1
        text, stopped = run.detok.feed(self._vocab.piece(token))
        if text:
            self._emit(protocol.Tokens(run.request.prompt_id, text))
        if stopped:
            self._finish(run, "stop", flush=False)
        elif run.generated == run.request.max_tokens or run.n_past + 1 >= self._n_ctx:
            self._finish(run, "length")
        else:
            run.next_token = token

    def _finish(self, run: _Running, reason: str, *, error: str | None = None, flush: bool = True) -> None:
        if flush and error is None:
            rest = run.detok.flush()
            if rest:
                self._emit(protocol.Tokens(run.request.prompt_id, rest))
        C.llama_sampler_free(run.sampler)
        run.prompt.free()
        del self._running[run.slot.seq_id]
        if error is not None:
            self._clear(run.slot)  # its cache may be inconsistent
        end = time.perf_counter()
        first = run.first_token or end
        self._emit(
            protocol.Finished(
                prompt_id=run.request.prompt_id,
                finish_reason=reason,  # type: ignore[arg-type]
                error=error,
                prompt_tokens=run.n_prompt - len(run.pending),
                cached_tokens=run.n_cached,
                dropped_turns=run.n_dropped,
                completion_tokens=run.generated,
                prompt_eval_s=first - run.started,
                generation_s=end - first,
            )
        )

    def _refuse(self, request: protocol.Submit, error: str) -> None:
        self._emit(protocol.Finished(request.prompt_id, "error", error, 0, 0, 0, 0, 0.0, 0.0))


def _leading_tokens(pending: collections.deque[Item], limit: int) -> list[int]:
    """Up to `limit` text tokens from the front of `pending`, stopping at an image."""
    tokens: list[int] = []
    for item in itertools.islice(pending, limit):
        if isinstance(item, ImageChunk):
            break
        tokens.append(item)
    return tokens


def _normalized(values: tuple[float, ...]) -> tuple[float, ...]:
    norm = math.sqrt(sum(v * v for v in values))
    return values if norm == 0 else tuple(v / norm for v in values)
