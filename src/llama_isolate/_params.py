"""The load description and the parameter classes.

All are frozen, keyword-only dataclasses checked at construction: a bad value
raises `LlamaValueError` (a `ValueError`) naming the field and what is allowed,
in the caller, never later inside the worker. Its ``param`` is the field as a
`LlamaLoad` holds it: ``"sampler_params.temperature"``, ``"context_params.n_ctx"``,
``"model_params.tensor_split[1]"``, ``"path"``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

from ._checks import check_text
from ._errors import LlamaValueError

SplitMode = Literal["none", "layer", "row"]
PoolingType = Literal["unspecified", "none", "mean", "cls", "last", "rank"]
FlashAttention = Literal["auto", "on", "off"]
RopeScaling = Literal["unspecified", "none", "linear", "yarn", "longrope"]
CacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]

SPLIT_MODES: tuple[str, ...] = ("none", "layer", "row")
POOLING_TYPES: tuple[str, ...] = ("unspecified", "none", "mean", "cls", "last", "rank")
FLASH_ATTENTION: tuple[str, ...] = ("auto", "on", "off")
ROPE_SCALING: tuple[str, ...] = ("unspecified", "none", "linear", "yarn", "longrope")
CACHE_TYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
UNQUANTIZED_CACHE = ("f32", "f16", "bf16")
_MAX_SEED = 2**32 - 2  # 0xFFFFFFFF is llama.cpp's "random seed" marker


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


_FIELD_OF = {
    "ModelParams": "model_params.",
    "ContextParams": "context_params.",
    "SamplerParams": "sampler_params.",
    "Speculative": "speculative.",
}
"""How a `LlamaLoad` names each class's fields (its own fields are named as they are)."""


def _param(cls: str, name: str) -> str:
    """The error's param for field `name` of class `cls`: ``sampler_params.temperature``."""
    return _FIELD_OF.get(cls, "") + name


def _fail(cls: str, name: str, allowed: str, value: object, code: str = "invalid_value") -> None:
    raise LlamaValueError(f"{cls}.{name} must be {allowed}, got {value!r}", param=_param(cls, name), code=code)


def _code(value: object, kind: type) -> str:
    """``invalid_value`` for a `kind` refused for its value, ``invalid_type`` for anything else."""
    return "invalid_value" if isinstance(value, kind) else "invalid_type"


def _check_int(cls: str, name: str, value: object, lo: int, hi: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(cls, name, "an int", value, "invalid_type")
    assert isinstance(value, int)
    if value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        _fail(cls, name, allowed, value)


def _check_float(
    cls: str, name: str, value: object, lo: float, hi: float | None = None, *, lo_open: bool = False
) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        _fail(cls, name, "a number", value, "invalid_type")
    number = float(value)  # type: ignore[arg-type]
    too_low = number <= lo if lo_open else number < lo
    if math.isnan(number) or too_low or (hi is not None and number > hi):
        low = f"> {lo}" if lo_open else f">= {lo}"
        _fail(cls, name, low if hi is None else f"{low} and <= {hi}", value)


def _check_choice(cls: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(cls, name, "one of " + ", ".join(repr(c) for c in choices), value)


def _check_str(cls: str, name: str, value: object, *, nul: bool = True) -> None:
    check_text(value, f"{cls}.{name}", nul=nul, param=_param(cls, name))


def _check_bool(cls: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        _fail(cls, name, "a bool", value, "invalid_type")


def _plain(value: object) -> object:
    """`value` with every str, int or float subclass (an enum member, say) made the plain type, inside tuples and
    lists too: the worker reads back only plain values, and a subclass would fail the load when it is sent."""
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):
        if isinstance(value, kind) and type(value) is not kind:
            return str.__str__(value) if kind is str else kind(value)
    if type(value) in (tuple, list):
        return type(value)(_plain(item) for item in value)  # type: ignore[call-arg,attr-defined]
    return value


def _plain_fields(obj: object) -> None:
    """Make every field of the frozen dataclass `obj` plain (see `_plain`)."""
    for f in fields(obj):  # type: ignore[arg-type]
        object.__setattr__(obj, f.name, _plain(getattr(obj, f.name)))


def _as_tuple(obj: object, name: str, value: object) -> tuple[object, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        _fail(type(obj).__name__, name, "a sequence", value, "invalid_type")
    assert isinstance(value, Sequence)
    items = tuple(value)
    object.__setattr__(obj, name, items)
    return items


@dataclass(frozen=True, kw_only=True)
class ModelParams:
    """How llama.cpp loads the model weights.

    Example::

        ModelParams(use_mmap=True, check_tensors=True)

    Attributes:
        n_gpu_layers: layers to offload to a GPU (0 = none, -1 = all); ignored without a GPU build.
        split_mode: how to spread the model over several GPUs: "none", "layer" or "row".
        main_gpu: the GPU used when `split_mode` is "none".
        tensor_split: fraction of the model per GPU (empty = llama.cpp decides).
        vocab_only: load only the vocabulary; such a worker cannot generate or embed.
        use_mmap: map the file instead of reading it into memory.
        use_mlock: lock the weights in RAM so they are never swapped out.
        check_tensors: validate the tensor data while loading (slower, catches corrupt files).
    """

    n_gpu_layers: int = 0
    split_mode: SplitMode = "layer"
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()
    vocab_only: bool = False
    use_mmap: bool = True
    use_mlock: bool = False
    check_tensors: bool = False

    def __post_init__(self) -> None:
        _plain_fields(self)
        c = "ModelParams"
        _check_int(c, "n_gpu_layers", self.n_gpu_layers, -1)
        _check_choice(c, "split_mode", self.split_mode, SPLIT_MODES)
        _check_int(c, "main_gpu", self.main_gpu, 0)
        for i, share in enumerate(_as_tuple(self, "tensor_split", self.tensor_split)):
            _check_float(c, f"tensor_split[{i}]", share, 0.0)
        for name in ("vocab_only", "use_mmap", "use_mlock", "check_tensors"):
            _check_bool(c, name, getattr(self, name))


@dataclass(frozen=True, kw_only=True)
class ContextParams:
    """The llama.cpp context: window, batching, threads, embeddings, cache and rope settings.

    Example::

        ContextParams(n_ctx=8192, n_parallel=4, embeddings=True)

    Attributes:
        n_ctx: context window, in tokens, of one conversation.
        n_batch: most tokens handed to one `llama_decode` call.
        n_ubatch: most tokens computed at once inside a decode (<= n_batch).
        n_parallel: sequences decoded together; 1 = strict FIFO, one prompt at a time.
        n_threads: threads for generation (default: the CPUs this process may use).
        n_threads_batch: threads for prompt processing (default: the same).
        adapt_threads: decode with fewer threads while other processes keep CPUs
            busy (re-estimated every quarter second, from /proc/stat), never more
            than `n_threads`. ggml's threads wait for each other hundreds of
            times per token, so one preempted thread stalls them all: on 2 cores
            beside one busy process, 2 threads ran at a third of their speed
            and 1 thread at 0.7x. False = always `n_threads`.
        n_predict: default most new tokens per prompt; -1 = until end of generation or context full.
        embeddings: allow `get_embeddings()`.
        pooling_type: how token embeddings become one vector; "unspecified" = the model's own,
            or "mean" for a model that names none.
        flash_attention: "auto", "on" or "off". "auto" with no layer on a GPU is
            measured on the first load of a model on a machine (about 3 s for a
            135M model, then read from a cache in ~/.cache/llama-isolate): which
            is faster differs between CPUs and with the depth of the context
            (docs/performance.md). A quantized `type_v` needs it on; with a GPU,
            llama.cpp decides. `ModelInfo.flash_attention` says what was chosen.
        type_k, type_v: KV cache data types; a quantized `type_v` needs flash attention.
        rope_scaling_type, rope_freq_base, rope_freq_scale, yarn_*: rope/YaRN overrides;
            None keeps the model's value.
        cache_ram_mib: RAM for the KV caches of conversations waiting for a slot. A
            conversation keeps its KV cache between turns; when its slot is needed by
            another, its cache is parked here and restored when it returns, instead of
            processing its history again. 0 = never park (history is re-processed).
    """

    n_ctx: int = 4096
    n_batch: int = 512
    n_ubatch: int = 512
    n_parallel: int = 1
    n_threads: int = field(default_factory=_cpu_count)
    n_threads_batch: int = field(default_factory=_cpu_count)
    adapt_threads: bool = True
    n_predict: int = -1
    embeddings: bool = False
    pooling_type: PoolingType = "unspecified"
    flash_attention: FlashAttention = "auto"
    type_k: CacheType = "f16"
    type_v: CacheType = "f16"
    rope_scaling_type: RopeScaling = "unspecified"
    rope_freq_base: float | None = None
    rope_freq_scale: float | None = None
    yarn_ext_factor: float | None = None
    yarn_attn_factor: float | None = None
    yarn_beta_fast: float | None = None
    yarn_beta_slow: float | None = None
    yarn_orig_ctx: int | None = None
    cache_ram_mib: int = 1024

    def __post_init__(self) -> None:
        _plain_fields(self)
        c = "ContextParams"
        _check_int(c, "n_ctx", self.n_ctx, 64, 1 << 24)
        _check_int(c, "n_batch", self.n_batch, 1, 1 << 20)
        _check_int(c, "n_ubatch", self.n_ubatch, 1, self.n_batch)
        _check_int(c, "n_parallel", self.n_parallel, 1, 64)
        _check_int(c, "n_threads", self.n_threads, 1, 1024)
        _check_int(c, "n_threads_batch", self.n_threads_batch, 1, 1024)
        _check_bool(c, "adapt_threads", self.adapt_threads)
        if self.n_predict != -1:
            _check_int(c, "n_predict", self.n_predict, 1)
        _check_bool(c, "embeddings", self.embeddings)
        _check_choice(c, "pooling_type", self.pooling_type, POOLING_TYPES)
        if self.embeddings and self.pooling_type == "none":
            _fail(c, "pooling_type", "a pooling (not 'none') when embeddings=True: one vector per text", "none")
        _check_choice(c, "flash_attention", self.flash_attention, FLASH_ATTENTION)
        _check_choice(c, "type_k", self.type_k, CACHE_TYPES)
        _check_choice(c, "type_v", self.type_v, CACHE_TYPES)
        if self.type_v not in UNQUANTIZED_CACHE and self.flash_attention == "off":
            _fail(c, "type_v", "f32, f16 or bf16 when flash_attention='off'", self.type_v)
        _check_choice(c, "rope_scaling_type", self.rope_scaling_type, ROPE_SCALING)
        for name in ("rope_freq_base", "rope_freq_scale"):
            if getattr(self, name) is not None:
                _check_float(c, name, getattr(self, name), 0.0, lo_open=True)
        for name in ("yarn_ext_factor", "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow"):
            if getattr(self, name) is not None:
                _check_float(c, name, getattr(self, name), 0.0)
        if self.yarn_orig_ctx is not None:
            _check_int(c, "yarn_orig_ctx", self.yarn_orig_ctx, 1)
        _check_int(c, "cache_ram_mib", self.cache_ram_mib, 0)


@dataclass(frozen=True, kw_only=True)
class SamplerParams:
    """How the next token is chosen; every field is a stage of llama.cpp's sampler chain.

    The chain runs: grammar, logit bias, penalties, DRY, top-k, typical, top-p, min-p, XTC,
    temperature, then a random draw (or mirostat, or greedy).

    Example::

        SamplerParams(temperature=0.2, top_k=20, stop=("\\n\\n",), seed=42)
        SamplerParams(greedy=True)  # always the most likely token

    Attributes:
        temperature: randomness; 0 means greedy.
        top_k: keep the k most likely tokens (0 = off).
        top_p: keep the smallest set whose probability reaches p (1.0 = off).
        min_p: drop tokens below p times the top token's probability (0.0 = off).
        typical_p: locally typical sampling (1.0 = off).
        repeat_penalty: divide the logits of recent tokens (1.0 = off).
        repeat_last_n: how many recent tokens the penalties look at (-1 = the whole context).
        frequency_penalty, presence_penalty: OpenAI-style penalties (0.0 = off).
        mirostat: 0 = off, 1 = Mirostat, 2 = Mirostat 2.0 (replaces top-k/p/min-p/typical/XTC).
        mirostat_tau, mirostat_eta: Mirostat's target surprise and learning rate.
        dry_multiplier: DRY repetition penalty strength (0.0 = off).
        dry_base, dry_allowed_length, dry_penalty_last_n, dry_sequence_breakers: DRY's settings.
        xtc_probability, xtc_threshold: "exclude top choices" sampling (probability 0.0 = off).
        grammar: GBNF grammar text the output must follow (root rule "root").
        seed: random seed; None = a new one every prompt.
        greedy: always take the most likely token.
        stop: strings that end generation; they are not part of the returned text.
        logit_bias: (token id, bias) pairs (a dict is taken too): the bias is
            added to the token's logit before every other stage (as
            llama.cpp's logit-bias sampler does); -100 all but bans a token,
            ``float("-inf")`` bans it. Kept sorted by token id. A token id
            outside the model's vocabulary is refused at send time.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    mirostat: Literal[0, 1, 2] = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", '"', "*")
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    grammar: str | None = None
    seed: int | None = None
    greedy: bool = False
    stop: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        _plain_fields(self)
        c = "SamplerParams"
        _check_float(c, "temperature", self.temperature, 0.0, 100.0)
        _check_int(c, "top_k", self.top_k, 0)
        _check_float(c, "top_p", self.top_p, 0.0, 1.0, lo_open=True)
        _check_float(c, "min_p", self.min_p, 0.0, 1.0)
        _check_float(c, "typical_p", self.typical_p, 0.0, 1.0, lo_open=True)
        _check_float(c, "repeat_penalty", self.repeat_penalty, 0.0, 100.0, lo_open=True)
        _check_int(c, "repeat_last_n", self.repeat_last_n, -1)
        _check_float(c, "frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_float(c, "presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_choice(c, "mirostat", self.mirostat, (0, 1, 2))  # type: ignore[arg-type]
        _check_float(c, "mirostat_tau", self.mirostat_tau, 0.0, lo_open=True)
        _check_float(c, "mirostat_eta", self.mirostat_eta, 0.0, 1.0, lo_open=True)
        _check_float(c, "dry_multiplier", self.dry_multiplier, 0.0)
        _check_float(c, "dry_base", self.dry_base, 1.0)
        _check_int(c, "dry_allowed_length", self.dry_allowed_length, 0)
        _check_int(c, "dry_penalty_last_n", self.dry_penalty_last_n, -1)
        for breaker in _as_tuple(self, "dry_sequence_breakers", self.dry_sequence_breakers):
            if not isinstance(breaker, str) or not breaker:
                _fail(c, "dry_sequence_breakers", "non-empty strings", breaker, _code(breaker, str))
            # llama.cpp takes them as C strings: a NUL would silently cut one short
            _check_str(c, "dry_sequence_breakers", breaker, nul=False)
        _check_float(c, "xtc_probability", self.xtc_probability, 0.0, 1.0)
        _check_float(c, "xtc_threshold", self.xtc_threshold, 0.0, 1.0)
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar.strip()):
            _fail(c, "grammar", "None or non-empty GBNF text", self.grammar, _code(self.grammar, str))
        if self.grammar is not None:
            _check_str(c, "grammar", self.grammar, nul=False)  # a C string: a NUL would cut it short
        if self.seed is not None:
            _check_int(c, "seed", self.seed, 0, _MAX_SEED)
        _check_bool(c, "greedy", self.greedy)
        for stop in _as_tuple(self, "stop", self.stop):
            if not isinstance(stop, str) or not stop:
                _fail(c, "stop", "a sequence of non-empty strings", stop, _code(stop, str))
            _check_str(c, "stop", stop)
        self._normalize_logit_bias()

    def _normalize_logit_bias(self) -> None:
        value: object = self.logit_bias
        pairs = list(value.items()) if isinstance(value, Mapping) else value
        what = "(token id, bias) pairs or a dict of them, ids >= 0, biases numbers (not NaN or +inf)"
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
            _fail("SamplerParams", "logit_bias", what, value, "invalid_type")
        assert isinstance(pairs, Sequence)
        merged: dict[int, float] = {}
        for pair in pairs:
            if not isinstance(pair, Sequence) or isinstance(pair, (str, bytes)) or len(pair) != 2:
                _fail("SamplerParams", "logit_bias", what, pair)
            token, bias = pair
            if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                _fail("SamplerParams", "logit_bias", what, pair)
            if not isinstance(bias, (int, float)) or isinstance(bias, bool) or math.isnan(bias) or bias == math.inf:
                _fail("SamplerParams", "logit_bias", what, pair)
            merged[token] = float(bias)
        object.__setattr__(self, "logit_bias", tuple(sorted(merged.items())))


def _check_path(name: str, value: object) -> None:
    if not isinstance(value, (str, os.PathLike)):
        _fail("LlamaLoad", name, "a non-empty str or os.PathLike", value, "invalid_type")
    path = os.fspath(value)  # type: ignore[call-overload]
    if not path:
        _fail("LlamaLoad", name, "a non-empty str or os.PathLike", value)
    if isinstance(path, str):
        _check_str("LlamaLoad", name, path, nul=False)


SpeculativeMode = Literal["ngram", "draft"]
MAX_DRAFT = 256
"""The most `Speculative.max_draft` may be."""


@dataclass(frozen=True, kw_only=True)
class Speculative:
    """Speculative decoding: guess the next tokens cheaply, then check them all in one pass of the model.

    On a CPU, one forward pass over a few tokens costs little more than over
    one, so every guessed token the model agrees with is nearly free. The
    output is the model's own: each guess is kept only when the token the
    model samples at its place is that very token (greedy replies are the
    same token for token; sampled replies follow the model's distribution).
    See docs/speculative.md.

    Example::

        LlamaLoad(path=default_model_path(), speculative=Speculative())  # n-gram lookup
        LlamaLoad(path=target, speculative=Speculative(mode="draft", draft_model_path=small))

    Attributes:
        mode: where the guesses come from. ``"ngram"``: the conversation itself
            (prompt and reply): when its last few tokens appeared before, the
            tokens that followed them there (no second model; pays on replies
            that repeat their input: edits, quotes, filled-in forms).
            ``"draft"``: a smaller model with the same vocabulary, run in the
            same worker (`draft_model_path`).
        draft_model_path: the draft model's GGUF file, for ``mode="draft"``;
            its vocabulary must be the target's (checked at load).
        max_draft: the most tokens guessed for one conversation in one step.
        min_ngram, max_ngram: the n-gram lengths looked up (longest first), for
            ``mode="ngram"``.
        adaptive: guess only while it pays: each conversation's guess length
            follows its acceptance rate and the measured cost of a longer
            batch, and a conversation whose guesses keep failing stops guessing
            for a while. False always guesses up to `max_draft` (for tests).
    """

    mode: SpeculativeMode = "ngram"
    draft_model_path: str | os.PathLike[str] | None = None
    max_draft: int = 16
    min_ngram: int = 2
    max_ngram: int = 4
    adaptive: bool = True

    def __post_init__(self) -> None:
        _plain_fields(self)
        c = "Speculative"
        _check_choice(c, "mode", self.mode, ("ngram", "draft"))
        if self.mode == "draft":
            if self.draft_model_path is None:
                _fail(c, "draft_model_path", "a GGUF path when mode='draft'", None)
            _check_path("speculative.draft_model_path", self.draft_model_path)
            object.__setattr__(self, "draft_model_path", os.fspath(self.draft_model_path))  # type: ignore[arg-type]
        elif self.draft_model_path is not None:
            _fail(c, "draft_model_path", "None unless mode='draft'", self.draft_model_path)
        _check_int(c, "max_draft", self.max_draft, 1, MAX_DRAFT)
        _check_int(c, "min_ngram", self.min_ngram, 1, 64)
        _check_int(c, "max_ngram", self.max_ngram, self.min_ngram, 64)
        _check_bool(c, "adaptive", self.adaptive)


MAX_IMAGE_PIXELS = 33_554_432
"""`LlamaLoad.max_image_pixels`'s default: 32 Mi pixels (8192 x 4096, a 32-megapixel photo)."""

MAX_PROMPT_PIXELS = 4 * MAX_IMAGE_PIXELS
"""`LlamaLoad.max_prompt_pixels`'s default: the images of one prompt together, 128 Mi pixels."""

MAX_MESSAGES = 4096
"""`LlamaLoad.max_messages`'s default."""


@dataclass(frozen=True, kw_only=True)
class LlamaLoad:
    """Everything the worker needs to load a model.

    Example::

        LlamaLoad(
            path=default_model_path(),
            context_params=ContextParams(n_ctx=8192),
            sampler_params=SamplerParams(temperature=0.2),
        )

    Attributes:
        path: the GGUF model file (a str or `os.PathLike`; stored as a str).
        model_params, context_params, sampler_params: see their classes;
            `sampler_params` is the default of every prompt.
        mmproj_path: a multimodal projector GGUF; enables image prompts (stored as a str).
        chat_template: a Jinja chat template that replaces the model's own.
        tool_format: how the model writes tool calls: ``"hermes"`` (``<tool_call>``
            JSON), ``"llama3"`` (Llama 3's JSON reply), or ``"auto"`` (read from
            the chat template, Hermes when it does not tell). See docs/tools.md.
        max_image_pixels: the largest image (width x height) an image prompt
            may carry; a larger one is refused before it is decoded (default
            33,554,432 = 32 Mi pixels, e.g. 8192 x 4096). The projector scales every
            image down to its own size anyway (a few hundred pixels wide), so
            this only guards memory and time: a 20000x20000 PNG of 388 KB
            would decode to 1.2 GB.
        max_prompt_pixels: the most pixels the images of one prompt may have
            together, the history's included (default 134,217,728 = 128 Mi;
            their decoded bitmaps are held together). Refused from the files'
            headers before anything is decoded.
        max_messages: the most messages a prompt's conversation may have (default
            4096); a longer one is refused before it is rendered, or, where old
            turns may be left out, cut down to that many first.
        speculative: speculative decoding (see `Speculative`); None (the default) = off.
        verbose: let llama.cpp's own log through to stderr (silent by default).
    """

    path: str | os.PathLike[str]
    model_params: ModelParams = field(default_factory=ModelParams)
    context_params: ContextParams = field(default_factory=ContextParams)
    sampler_params: SamplerParams = field(default_factory=SamplerParams)
    mmproj_path: str | os.PathLike[str] | None = None
    chat_template: str | None = None
    tool_format: Literal["auto", "hermes", "llama3"] = "auto"
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_prompt_pixels: int = MAX_PROMPT_PIXELS
    max_messages: int = MAX_MESSAGES
    speculative: Speculative | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        _plain_fields(self)
        c = "LlamaLoad"
        _check_path("path", self.path)
        object.__setattr__(self, "path", os.fspath(self.path))
        if self.mmproj_path is not None:
            _check_path("mmproj_path", self.mmproj_path)
            object.__setattr__(self, "mmproj_path", os.fspath(self.mmproj_path))
        for name, kind in (
            ("model_params", ModelParams),
            ("context_params", ContextParams),
            ("sampler_params", SamplerParams),
        ):
            if not isinstance(getattr(self, name), kind):
                _fail(c, name, f"a {kind.__name__}", getattr(self, name), "invalid_type")
        template = self.chat_template
        if template is not None and (not isinstance(template, str) or not template.strip()):
            _fail(c, "chat_template", "None or non-empty Jinja text", template, _code(template, str))
        if template is not None:
            _check_str(c, "chat_template", template)
        _check_choice(c, "tool_format", self.tool_format, ("auto", "hermes", "llama3"))
        _check_int(c, "max_image_pixels", self.max_image_pixels, 1)
        _check_int(c, "max_prompt_pixels", self.max_prompt_pixels, 1)
        _check_int(c, "max_messages", self.max_messages, 1)
        if self.speculative is not None and not isinstance(self.speculative, Speculative):
            _fail(c, "speculative", "None or a Speculative", self.speculative, "invalid_type")
        _check_bool(c, "verbose", self.verbose)
