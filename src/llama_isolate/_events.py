"""Plain data the parent hands to callers: the status enum and completion events."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

FinishReason = Literal["stop", "length", "stopped", "cancelled", "error"]

ErrorCode = Literal[
    "context_length_exceeded", "invalid_prompt", "invalid_grammar", "engine_error", "worker_died", "internal_error"
]
"""Why a prompt failed, for programs (`CompletionEvent.error_code`); `error` says it for people.

- ``"context_length_exceeded"``: the prompt (after leaving out old turns) does not fit the context;
- ``"context_length_exceeded"`` also covers a prompt over one of the bounds checked before it is tokenized
  (bytes, messages, special tokens: docs/reliability.md);
- ``"invalid_prompt"``: the prompt itself cannot run: the chat template refused the conversation,
  an image did not decode or is misplaced, or the conversation's `messages` were edited into a
  malformed shape;
- ``"invalid_grammar"``: the reply's grammar (`SamplerParams.grammar`, or the one `json_schema` or
  `tools` made) does not parse, accepts no first token, or reached a dead end;
- ``"engine_error"``: llama.cpp failed while decoding (for example a full KV cache);
- ``"worker_died"``: the worker process crashed or froze while the prompt was pending;
- ``"internal_error"``: the parent failed to handle one of the prompt's replies (a bug).
"""


class LlamaStatus(enum.Enum):
    """The life of a `LlamaParent`.

    ``UNINITIALIZED -> LOADING -> READY <-> GENERATING``; ``ERROR`` when the
    worker failed or died; ``DISPOSED`` after `dispose()` (final).

    Example::

        if parent.status is LlamaStatus.READY:
            ...
    """

    UNINITIALIZED = "uninitialized"
    LOADING = "loading"
    READY = "ready"
    GENERATING = "generating"
    ERROR = "error"
    DISPOSED = "disposed"

    @property
    def is_ready(self) -> bool:
        """True in READY and GENERATING: a worker is there and takes prompts."""
        return self in (LlamaStatus.READY, LlamaStatus.GENERATING)


@dataclass(frozen=True, kw_only=True)
class CompletionTimings:
    """Where the time of one prompt went, in seconds.

    Example::

        event = await parent.wait_for_completion(pid)
        print(f"first token after {event.timings.first_token_s:.3f} s")

    Attributes:
        queued_s: from `send_prompt` until the worker started the prompt.
        first_token_s: from `send_prompt` until the first token (None if there was none).
        total_s: from `send_prompt` until the completion event.
        prompt_eval_s: time the worker spent processing the prompt tokens.
        tokens_per_second: generated tokens per second of generation (0.0 if none).
        draft_tokens: with speculative decoding (`Speculative`), the guessed
            tokens the model checked (0 without it).
        draft_accepted: of them, the ones it agreed with, which became reply
            tokens without a step of their own.
    """

    queued_s: float
    first_token_s: float | None
    total_s: float
    prompt_eval_s: float = 0.0
    tokens_per_second: float = 0.0
    draft_tokens: int = 0
    draft_accepted: int = 0

    @property
    def draft_acceptance(self) -> float | None:
        """`draft_accepted` / `draft_tokens`, None when nothing was drafted."""
        return self.draft_accepted / self.draft_tokens if self.draft_tokens else None


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made, for a prompt sent with ``tools=``.

    Answer it with ``send_prompt(result, tool_call_id=call.id)``.

    Example::

        event = await parent.wait_for_completion(pid)
        for call in event.tool_calls:
            print(call.name, call.arguments)  # get_weather {'city': 'Paris'}

    Attributes:
        id: this call's id (``call_...``), to answer it with.
        name: the function's name, one of the tools given.
        arguments: the arguments, valid against the function's parameter schema.
    """

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call as the model writes it, on the `tool_call_deltas` streams.

    A call's first delta carries its `name` (and `arguments` ""); the
    deltas after it carry the next pieces of the arguments' JSON text.
    Joined, a call's pieces are JSON that parses to the `ToolCall.arguments`
    of the completion event, whose `ToolCall.id` is this `id`. A call cut
    short by ``max_tokens`` streams only its beginning and is not on the event.

    Example::

        scope.tool_call_deltas.listen(lambda d: print(d.index, d.name, d.arguments))

    Attributes:
        index: which of the reply's calls (0 for the first).
        id: the call's id (``call_...``), the same on each of its deltas.
        name: the function's name on the call's first delta, "" on the others.
        arguments: the next piece of the arguments' JSON text.
    """

    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class CompletionChoice:
    """One of the replies of a prompt sent with ``n=`` (choice 0 is the event's own `text`).

    Example::

        pid = await scope.send_prompt("A name for a cat?", n=3, sampler_params=SamplerParams(seed=1))
        for choice in (await parent.wait_for_completion(pid)).choices:
            print(choice.index, choice.text, choice.finish_reason)

    Attributes:
        index: 0 to n-1.
        text: this choice's reply.
        finish_reason: as `CompletionEvent.finish_reason`.
        completion_tokens: tokens this choice generated.
        logprobs: this choice's tokens with their log probabilities, for a
            prompt sent with ``logprobs=k`` (None otherwise).
    """

    index: int
    text: str
    finish_reason: FinishReason
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, how likely it was, and the tokens that were most likely in its place.

    Sent for prompts given ``logprobs=k``: on the `token_logprobs` stream as
    they are generated, and all together on `CompletionEvent.logprobs`.

    Example::

        pid = await scope.send_prompt("Yes or no?", logprobs=3, max_tokens=1)
        first = (await parent.wait_for_completion(pid)).logprobs[0]
        print(first.text, math.exp(first.logprob), [(t.text, t.logprob) for t in first.top])

    Attributes:
        token: the token id.
        text: its text; bytes that are not a whole UTF-8 character show as U+FFFD.
        piece: its exact bytes (a character may span several tokens).
        logprob: the natural log of its probability, from the model's logits
            after the logit bias and the repetition penalties, before
            temperature, truncation (top-k/p) and grammar.
        top: the k most likely tokens at this step, most likely first (each
            with an empty `top`); it may or may not include `token`.
    """

    token: int
    text: str
    piece: bytes
    logprob: float
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, kw_only=True)
class CompletionEvent:
    """What happened to one prompt; emitted once per prompt id.

    Example::

        pid = await parent.send_prompt("Hello")
        event = await parent.wait_for_completion(pid)
        if event.success:
            print(event.text, event.finish_reason)
        else:
            print("failed:", event.error)

    Attributes:
        prompt_id: the id `send_prompt` returned.
        success: False when the prompt failed (`error` says why).
        error: a sentence for a person, or None.
        text: the whole generated text (also when stopped part-way).
        finish_reason: "stop" (end of generation or a stop string), "length"
            (max tokens or context full), "stopped" (`stop()`), "cancelled"
            (`scope.stop()`/`dispose()`), "error".
        scope_id: the scope the prompt was sent through (`LlamaParent.default_scope`'s id, ``"default"``, for
            the parent's own conversation), or None for a prompt of `LlamaParent.generate` (a conversation of its
            own).
        prompt_tokens: prompt tokens the worker processed for this prompt (the
            conversation formatted by the chat template, minus `cached_tokens`).
        cached_tokens: prompt tokens reused from the conversation's KV cache
            (its earlier turns), not processed again.
        dropped_turns: the conversation's oldest messages the model did not see
            because the whole conversation no longer fit the context (see the
            README's "Long conversations"); `messages` still holds them.
        completion_tokens: tokens generated.
        timings: see `CompletionTimings`.
        error_code: why it failed, as an `ErrorCode` (None unless `success` is False):
            ``"context_length_exceeded"``, ``"invalid_prompt"``, ``"invalid_grammar"``, ``"engine_error"``,
            ``"worker_died"`` or ``"internal_error"``.
        logprobs: for a prompt sent with ``logprobs=k``, one `TokenLogprob`
            per token of `text` (a stop string's tokens left out); None otherwise.
        tool_calls: the functions the model called, for a prompt sent with
            ``tools=`` (`text` is then what it wrote before its first call).
        choices: for a prompt sent with ``n`` above 1, every reply
            (`CompletionChoice`), choice 0 first (the one `text`, the streams
            and `messages` carry); empty otherwise.
    """

    prompt_id: str
    success: bool
    error: str | None
    text: str
    finish_reason: FinishReason
    scope_id: str | None
    prompt_tokens: int
    cached_tokens: int
    dropped_turns: int
    completion_tokens: int
    timings: CompletionTimings
    error_code: ErrorCode | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    choices: tuple[CompletionChoice, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    """Facts about the loaded model, from `LlamaParent.model_info` once it is ready.

    Example::

        await parent.init()
        info = parent.model_info
        print(info.description, info.n_params, "parameters,", info.n_embd, "wide")

    Attributes:
        description: llama.cpp's one-line description (architecture, size, quantization).
        n_params, size_bytes: parameter count and weight bytes.
        n_ctx: the context window of one conversation (`ContextParams.n_ctx`).
        n_ctx_train: the context the model was trained with.
        n_embd: the embedding width (the length of `get_embeddings()` vectors).
        n_vocab: the vocabulary size.
        has_chat_template: False for a model without a template (plain text completion).
        tool_format: how the model writes tool calls, ``"hermes"`` or ``"llama3"``
            (`LlamaLoad.tool_format`, or read from the chat template; see docs/tools.md).
        flash_attention: whether the context uses flash attention; None where llama.cpp
            chose (layers on a GPU). `ContextParams.flash_attention="auto"` on a CPU is
            measured on the first load on a machine (docs/performance.md).
        flash_attention_note: how that was decided, with the figures it was decided by.
    """

    description: str
    n_params: int
    size_bytes: int
    n_ctx: int
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    has_chat_template: bool
    tool_format: Literal["hermes", "llama3"] = "hermes"
    flash_attention: bool | None = None
    flash_attention_note: str = ""


@dataclass(frozen=True)
class Embedding:
    """An embedding vector and the number of tokens its text took (`LlamaParent.embed`).

    Example::

        result = await parent.embed("a sentence")
        assert len(result.vector) == parent.model_info.n_embd
    """

    vector: list[float]
    tokens: int
