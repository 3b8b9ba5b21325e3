"""The engine: continuous batching over llama.cpp sequence slots.

There are `n_parallel` slots, each one llama.cpp sequence id (`SlotPool`). A
prompt is prepared (`Preparer`), admitted into a free slot, the one whose
KV cache shares the longest prefix with it (its conversation's, or any other
cache: see `SlotPool.assign`), and only the tokens past the shared prefix are
decoded.

One `step()`:

1. takes the image prompts whose preparation finished;
2. admits waiting prompts into free slots;
3. encodes the images that are next in a prompt;
4. builds one batch: the next token of every generating sequence, plus a
   chunk of prompt tokens of sequences still reading their prompt (`Batch`);
5. decodes it with as many threads as the machine leaves free (`ThreadTuner`);
6. samples a token for every sequence that asked for logits.

A step is a transaction: a sequence advances only when its decode succeeded.
When the decode was aborted (a stop), every sequence in the batch is rolled
back to where it was, the stop is applied, and the others carry on next step.
A failure that belongs to one prompt (its template, its grammar, its image,
its sampling) ends that prompt alone, with the reason as its error.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

import llama_cpp as C

from .. import _protocol as protocol
from .._events import ErrorCode, FinishReason, ModelInfo
from .._params import LlamaLoad
from . import choices
from .abort import AbortFlag
from .batch import Batch, Running
from .bounds import TooBig
from .chat import ChatTemplateError
from .draft_model import DraftModel
from .embed import Embedder, EmbeddingRefused
from .llama import LlamaLog, LoadedModel, LoadFailure, load_model, model_description
from .prepare import Prepared, Preparer, Refused
from .prompt import ImageChunk
from .sampling import GrammarError, NoCandidate, Sampler, SamplerRefused
from .seqstate import StateMismatch, flash_attention_of, from_portable, to_portable
from .slots import SlotPool
from .speculate import Speculator, speculator_for
from .text import Detokenizer
from .threads import DECODE_ABORTED, ThreadTuner
from .vision import Vision
from .vocab import Vocab

logger = logging.getLogger("llama_isolate.worker")

_DECODE_NO_KV_SLOT = 1


class RequestFailure(Exception):
    """A request the engine refused; sent up as `RequestFailed`."""

    def __init__(self, kind: protocol.ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Engine:
    """Owns the model, the context, the slots and the prompts waiting for one."""

    def __init__(
        self,
        load: LlamaLoad,
        emit: Callable[[protocol.Reply], None],
        on_progress: Callable[[float], None] | None = None,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._emit = emit
        self._log = LlamaLog(load.verbose)
        self._handles: LoadedModel = load_model(load, self._log, on_progress)
        cp = load.context_params
        self._n_ctx = cp.n_ctx
        self._n_batch = cp.n_batch
        self._n_stream = cp.n_parallel + (1 if cp.embeddings else 0)
        try:
            self._vocab = Vocab(self._handles.model, load.chat_template)
            mtmd = self._handles.mtmd
            vision = Vision(mtmd, load.max_image_pixels, load.max_prompt_pixels) if mtmd else None
        except ChatTemplateError as exc:
            self._handles.close()
            raise LoadFailure("invalid_template", str(exc)) from exc
        except LoadFailure:
            self._handles.close()
            raise
        self._tool_format = self._vocab.chat.tool_format if load.tool_format == "auto" else load.tool_format
        ctx = self._handles.ctx
        self._abort = AbortFlag()
        self._batch: Batch | None = None
        if ctx:
            self._batch = Batch(max(cp.n_batch, cp.n_parallel), cp.n_batch)
            self._abort.install(ctx)
        self._slots = SlotPool(ctx, self._handles.model, cp.n_parallel, cp.cache_ram_mib * 2**20)
        self._preparer = Preparer(self._vocab, vision, cp.n_ctx, wake, max_messages=load.max_messages)
        self._vision = vision
        self._tuner = ThreadTuner(
            ctx,
            n_threads=cp.n_threads,
            n_threads_batch=cp.n_threads_batch,
            adaptive=cp.adapt_threads,
            abort=self._abort,
        )
        self._embedder = Embedder(
            self._handles,
            self._vocab,
            self._batch,
            self._abort,
            self._tuner,
            seq_id=cp.n_parallel,
            limit=min(cp.n_ubatch, cp.n_ctx),
            bounds=self._preparer.bounds,
        )
        self._running: dict[int, Running] = {}  # by seq_id
        self._steps = 0
        self._waiting: collections.deque[Prepared] = collections.deque()  # prepared, waiting for free slots
        self._draft: DraftModel | None = None
        self._speculator: Speculator | None = None
        if load.speculative is not None and self._batch is not None:
            try:
                self._speculator, self._draft = speculator_for(load, self._handles.model, self._log, self._abort)
            except BaseException:
                self.close()
                raise

    # ------------------------------------------------------------ facts

    def info(self) -> ModelInfo:
        model = self._handles.model
        return ModelInfo(
            description=model_description(model),
            n_params=int(C.llama_model_n_params(model)),
            size_bytes=int(C.llama_model_size(model)),
            n_ctx=self._n_ctx,
            n_ctx_train=int(C.llama_model_n_ctx_train(model)),
            n_embd=int(C.llama_model_n_embd(model)),
            n_vocab=self._vocab.n_tokens,
            has_chat_template=self._vocab.chat.has_template,
            tool_format=self._tool_format,
            flash_attention=self._handles.flash.on,
            flash_attention_note=self._handles.flash.note,
        )

    @property
    def busy(self) -> bool:
        """True while a prompt can be worked on now (prompts being prepared wake the loop when ready)."""
        return bool(self._waiting or self._running)

    @property
    def preparing(self) -> int:
        """Prompts being prepared off this thread; `wake` is called as each is ready."""
        return self._preparer.in_flight

    @property
    def abort_flag(self) -> AbortFlag:
        return self._abort

    @property
    def progress(self) -> int:
        """Grows with every step and every prompt prepared; read from the reader thread for the parent's liveness."""
        return self._steps + self._preparer.finished

    @property
    def threads(self) -> int:
        """The thread count decodes use now (see `ThreadTuner`)."""
        return self._tuner.current

    # ------------------------------------------------------------ commands

    def submit(self, request: protocol.Submit) -> None:
        """Prepare the prompt: on a preparation thread while others decode, here while nothing does.

        A text prompt that comes while nothing decodes holds nobody up, and preparing it at once lets prompts
        that came together start in the same step (on the threads each started when its own preparation
        ended). Preparation is bounded either way (`bounds`).
        """
        if request.images or self._running or self._preparer.in_flight:
            self._preparer.start(request)
            return
        try:
            self._waiting.append(self._preparer.prepare(request))
        except Refused as exc:
            self._refuse(request, str(exc), exc.code)

    def cancel(self, prompt_ids: tuple[str, ...], reason: protocol.CancelReason) -> None:
        """End these prompts with `reason`, running, waiting or being prepared; unknown ids are ignored."""
        wanted = set(prompt_ids)
        for run in [r for r in self._running.values() if r.request.prompt_id in wanted]:
            self._finish(run, reason)
        for item in [w for w in self._waiting if w.request.prompt_id in wanted]:
            self._waiting.remove(item)
            item.prompt.free()
            self._emit(protocol.Finished.unstarted(item.request.prompt_id, reason))
        for prompt_id in wanted:
            if self._preparer.cancel(prompt_id):
                self._emit(protocol.Finished.unstarted(prompt_id, reason))

    def drop_scope(self, scope_id: str) -> None:
        """Forget the conversation's KV cache, in a slot or parked."""
        self._preparer.forget(scope_id)
        self._slots.drop(scope_id, set(self._running))

    def save_scope(self, scope_id: str) -> protocol.ScopeState:
        """The conversation's tokens and KV state, in the portable form (see `seqstate`)."""
        state = self._slots.save(scope_id)
        return protocol.ScopeState(0, state.tokens, to_portable(state, self._n_stream))

    def load_scope(self, scope_id: str, tokens: tuple[int, ...], data: bytes) -> None:
        """Make a saved state the conversation's KV cache; raises `RequestFailure("state", ...)`."""
        if len(tokens) >= self._n_ctx:
            raise RequestFailure(
                "state",
                f"the state holds {len(tokens)} tokens, more than this parent's context of {self._n_ctx} "
                "(ContextParams.n_ctx)",
            )
        try:
            state = from_portable(tokens, data, self._n_stream)
        except StateMismatch as exc:
            raise RequestFailure("state", str(exc)) from None
        if not self._slots.load(scope_id, state, set(self._running)):
            saved = flash_attention_of(data)
            hint = (
                f"; it was saved with flash attention {saved}: if this parent's differs, use the same" if saved else ""
            )
            raise RequestFailure("state", f"llama.cpp refused the saved KV state{hint}")

    def embed(self, text: str, normalize: bool) -> tuple[tuple[float, ...], int]:
        """The pooled embedding of `text` and its token count; raises `RequestFailure`."""
        try:
            return self._embedder.embed(text, normalize)
        except EmbeddingRefused as exc:
            raise RequestFailure(exc.kind, str(exc)) from None

    def probe(self, turns: tuple[tuple[str, str], ...]) -> tuple[int, int]:
        """How many tokens of the prompt `turns` make a cache holds from its start, and how many it has."""
        try:
            self._preparer.bounds.messages_to_keep(turns, raw=False, trim=False)
        except TooBig:
            return 0, 0  # it cannot fit: no cache holds it, and tokenizing it would cost for nothing
        try:
            tokens = self._vocab.prompt_tokens(turns)
        except ChatTemplateError as exc:
            raise RequestFailure("request", str(exc)) from None
        return self._slots.longest_prefix(tokens), len(tokens)

    def rest(self) -> None:
        """Nothing to do until the next command."""
        self._tuner.rest()

    def close(self) -> None:
        """Free everything, without reporting anything: the parent settles what was still running.

        While an image is still being prepared on its thread, llama.cpp's
        handles stay allocated (the process is ending; freeing them under
        that thread would crash it).
        """
        self._tuner.close()
        idle = self._preparer.close()
        for run in list(self._running.values()):
            run.sampler.free()
            run.prompt.free()
        self._running.clear()
        for item in self._waiting:
            item.prompt.free()
        self._waiting.clear()
        if self._batch is not None:
            self._batch.free()
            self._batch = None
        if idle:
            if self._draft is not None:
                self._draft.close()
            self._handles.close()

    def fail_running(self, error: str) -> None:
        """End every running prompt with `error` (after a failure no single prompt can be blamed for)."""
        for run in list(self._running.values()):
            self._finish(run, "error", error=error)

    # ------------------------------------------------------------ the step

    def step(self) -> None:
        """Admit prompts into free slots, then decode one batch and sample."""
        self._steps += 1
        for request, outcome in self._preparer.done():  # 1
            if isinstance(outcome, Refused):
                self._refuse(request, str(outcome), outcome.code)
            else:
                self._waiting.append(outcome)
        self._admit()  # 2
        if not self._running or self._batch is None:
            return
        if not self._evaluate_images():  # 3
            return  # aborted: the stop is applied before anything else runs
        if not self._running:
            return
        if self._speculator is not None:  # 4
            self._speculator.draft([r for r in self._running.values() if r.next_token is not None])
        scheduled = self._batch.schedule(self._running.values())
        self._tuner.before_decode()  # 5
        began = time.perf_counter()
        rc = int(C.llama_decode(self._handles.ctx, self._batch.handle))
        self._tuner.after_decode(rc == DECODE_ABORTED)
        if rc == 0 and self._speculator is not None and all(r.next_token is not None for r in scheduled):
            self._speculator.cost.observe(self._batch.handle.n_tokens, time.perf_counter() - began)
        if rc == DECODE_ABORTED:  # a stop, or too many threads for a busy machine: redone next step
            self._roll_back(scheduled)
        elif rc != 0:
            self._roll_back(scheduled)
            self._fail_batch(scheduled, rc)
        else:
            self._advance(scheduled)  # 6

    def _admit(self) -> None:
        """Start waiting prompts in order while slots are free (a prompt with n choices needs n)."""
        while self._waiting:
            busy = set(self._running)
            free = self._slots.free_count(busy) - choices.reserved(self._running.values())
            if free < self._waiting[0].request.n:
                return
            self._start(self._waiting.popleft())

    def _start(self, prepared: Prepared) -> None:
        request = prepared.request
        self._emit(protocol.Started(request.prompt_id))
        if self._batch is None:
            prepared.prompt.free()
            self._refuse(request, "the model was loaded with vocab_only=True; it cannot generate")
            return
        try:
            sampler = Sampler(
                request.sampler,
                vocab=self._vocab.handle,
                n_vocab=self._vocab.n_tokens,
                n_ctx=self._n_ctx,
                logprobs=request.logprobs,
            )
        except SamplerRefused as exc:
            prepared.prompt.free()
            self._refuse(request, str(exc), "invalid_grammar" if isinstance(exc, GrammarError) else "invalid_prompt")
            return
        positions = prepared.prompt.flat()
        slot = self._slots.assign(request.scope_id, positions, set(self._running))
        n_cached, pending = self._slots.reuse_prefix(slot, prepared.prompt, positions)
        self._running[slot.seq_id] = Running(
            request=request,
            slot=slot,
            prompt=prepared.prompt,
            pending=collections.deque(pending),
            n_prompt=len(prepared.prompt) - n_cached,
            n_cached=n_cached,
            n_dropped=prepared.dropped,
            sampler=sampler,
            detok=Detokenizer(request.sampler.stop, request.tool_markers),
            spec=self._speculator.new_state(slot.seq_id) if self._speculator else None,
        )

    def _evaluate_images(self) -> bool:
        """Encode and decode every image that is next in a prompt; False if a stop aborted it."""
        for run in list(self._running.values()):
            while run.pending and isinstance(run.pending[0], ImageChunk):
                assert self._vision is not None
                image = run.pending[0]
                self._tuner.before_decode()
                rc = self._vision.evaluate(
                    self._handles.ctx,
                    image,
                    n_past=run.n_past,
                    seq_id=run.slot.seq_id,
                    n_batch=self._n_batch,
                    last=False,
                )
                self._tuner.after_decode(rc == DECODE_ABORTED)
                if rc != 0:
                    self._slots.cut(run.slot, run.n_past)
                    if rc == DECODE_ABORTED:
                        return False
                    self._finish(run, "error", error=f"the image could not be evaluated (code {rc})")
                    break
                run.pending.popleft()
                run.slot.tokens.extend(image.ids)
        return True

    def _roll_back(self, scheduled: list[Running]) -> None:
        # An aborted or failed decode may leave some ubatches in the KV cache.
        for run in scheduled:
            self._slots.cut(run.slot, run.n_past)

    def _fail_batch(self, scheduled: list[Running], rc: int) -> None:
        if rc == _DECODE_NO_KV_SLOT:
            reason = "the KV cache is full (no free slot for the batch); try a larger ContextParams.n_ctx"
        else:
            reason = f"llama_decode failed with code {rc} ({self._log.last(1) or 'no detail'})"
        for run in scheduled:
            self._finish(run, "error", error=reason)

    def _advance(self, scheduled: list[Running]) -> None:
        for run in scheduled:
            run.slot.tokens.extend(run.batch_tokens)
            if run.next_token is not None:
                run.next_token = None
            else:
                for _ in run.batch_tokens:
                    run.pending.popleft()
            if run.logits_index >= 0:
                self._sample(run)

    def _sample(self, run: Running) -> None:
        """Sample the run's next token; with a draft, verify it: sample each position in turn and keep the draft
        token there only when the sample is that very token (so the text is what it would be without one)."""
        if run.choice == 0 and run.request.n > 1 and not run.forked:
            handles = {"vocab": self._vocab.handle, "n_vocab": self._vocab.n_tokens, "n_ctx": self._n_ctx}
            for extra in choices.fork(run, self._slots, set(self._running), **handles):
                extra.spec = self._speculator.new_state(extra.slot.seq_id) if self._speculator else None
                self._running[extra.slot.seq_id] = extra
                self._sample(extra)  # from the same logits as choice 0
        draft, run.draft = run.draft, []
        base = run.n_past - len(draft)  # its tokens without the draft
        kept = 0
        ending: tuple[FinishReason, bool] | None = None
        error: str | None = None
        for i in range(len(draft) + 1):
            try:
                token = run.sampler.sample(self._handles.ctx, run.logits_index + i)
            except NoCandidate as exc:
                error = str(exc)
                break
            ending = self._take(run, token, base + i)
            if ending is not None:
                break
            if i < len(draft) and token == draft[i]:
                kept += 1
                continue
            run.next_token = token
            break
        if draft:
            assert run.spec is not None
            run.spec.verified(len(draft), kept)
            if kept < len(draft):
                self._slots.cut(run.slot, base + kept)
        if error is not None:
            self._finish(run, "error", error=error, code="invalid_grammar")
        elif ending is not None:
            self._finish(run, ending[0], flush=ending[1])

    def _take(self, run: Running, token: int, n_past: int) -> tuple[FinishReason, bool] | None:
        """Send `token`, sampled with `n_past` tokens in the run's cache; returns how the run ends (its finish
        reason, and whether the detokenizer's held text is flushed), or None if it goes on."""
        if run.first_token is None:
            run.first_token = time.perf_counter()
        if self._vocab.is_end_of_generation(token):
            return "stop", True
        run.generated += 1
        piece = self._vocab.piece(token)
        calling = run.detok.call_text is not None
        text, stopped = run.detok.feed(piece)
        if not calling and run.detok.call_text is not None and not self._tool_call_started(run):
            more, cut = run.detok.abandon_call()
            text, stopped = text + more, stopped or cut
        call = ""
        if run.detok.call_text is not None:
            call, run.call_sent = run.detok.call_text[run.call_sent :], len(run.detok.call_text)
        logprob = None
        if run.sampler.last is not None:
            chosen, top = run.sampler.last
            logprob = (token, piece, chosen, tuple((t, self._vocab.piece(t), lp) for t, lp in top))
        if text or call or logprob is not None:
            self._emit(protocol.Tokens(run.request.prompt_id, text, logprob, run.choice, call))
        if stopped:
            return "stop", False
        if run.generated == run.request.max_tokens or n_past + 1 >= self._n_ctx:
            return "length", True
        return None

    def _tool_call_started(self, run: Running) -> bool:
        """The reply just wrote its tool-call marker: from here on the call's grammar holds (for tool_choice
        auto; required's grammar held from the start). False if what follows the marker already breaks it."""
        request = run.request
        call = run.detok.call_text
        if request.tool_grammar is None or not request.tool_markers or call is None:
            return True
        written = self._vocab.tokenize(call, add_special=False, parse_special=False)  # the grammar covers the marker
        if run.sampler.activate(request.tool_grammar, written):
            return True
        logger.info("a tool call began in a form its grammar does not accept; it is left as text")
        return False

    def _finish(
        self,
        run: Running,
        reason: FinishReason,
        *,
        error: str | None = None,
        code: ErrorCode = "engine_error",
        flush: bool = True,
    ) -> None:
        if flush and error is None:
            rest = run.detok.flush()
            if rest:
                self._emit(protocol.Tokens(run.request.prompt_id, rest, None, run.choice))
        run.sampler.free()
        run.prompt.free()
        del self._running[run.slot.seq_id]
        if error is not None:
            self._slots.clear(run.slot)  # its cache may be inconsistent
        end = time.perf_counter()
        first = run.first_token or end
        self._emit(
            protocol.Finished(
                prompt_id=run.request.prompt_id,
                finish_reason=reason,
                error=error,
                prompt_tokens=run.n_prompt - len(run.pending),
                cached_tokens=run.n_cached,
                dropped_turns=run.n_dropped,
                completion_tokens=run.generated,
                prompt_eval_s=first - run.started,
                generation_s=end - first,
                error_code=code if error is not None else None,
                tool_text=run.detok.call_text,
                choice=run.choice,
                forks=run.forks,
                draft_tokens=0 if run.spec is None else run.spec.drafted,
                draft_accepted=0 if run.spec is None else run.spec.accepted,
            )
        )
        if run.choice:
            run.slot.owner = None  # its cache stays, as an orphan, for prompts that start the same way

    def _refuse(self, request: protocol.Submit, error: str, code: ErrorCode = "invalid_prompt") -> None:
        self._emit(protocol.Finished.failed(request.prompt_id, error, code))
