"""The only definition of what crosses the process boundary.

Commands go down (parent -> worker), replies come up (worker -> parent). Each
message is a small frozen dataclass; prompts are correlated by `prompt_id`,
other requests by `request_id`. Errors cross as data: an `ErrorKind` and a
sentence, which the parent maps to a public exception.

On the wire a message is a 4-byte big-endian length followed by a pickle of
the dataclass. Decoding only accepts the classes defined here and the
parameter classes, so a frame can never name arbitrary code.
"""

from __future__ import annotations

import io
import pickle
import struct
from dataclasses import dataclass
from typing import Literal

from ._params import ContextParams, LlamaLoad, ModelParams, SamplerParams

ErrorKind = Literal[
    "not_found",  # a path does not exist
    "invalid_model",  # not a GGUF / llama.cpp refused the file
    "out_of_memory",  # weights or context did not fit
    "invalid_template",  # the chat template does not compile
    "invalid_mmproj",  # mmproj_path is not a projector mtmd can load for this model
    "feature",  # the load did not enable what the request needs
    "request",  # the request itself is bad (too long, empty, ...)
    "internal",  # an unexpected exception in the worker
]

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30  # 1 GiB: far above any real message, catches a corrupt header


# ---------------------------------------------------------------- commands (down)


@dataclass(frozen=True)
class Load:
    """First command: load this model and reply `Loaded` or `LoadFailed`."""

    load: LlamaLoad


@dataclass(frozen=True)
class Submit:
    """Start generating a reply to the conversation `messages` (its last turn is the prompt)."""

    prompt_id: str
    scope_key: str
    messages: tuple[tuple[str, str], ...]
    sampler: SamplerParams
    max_tokens: int
    # Per message, the (name, encoded bytes) of the images at its media markers;
    # empty when the conversation has no images at all.
    images: tuple[tuple[tuple[str, bytes], ...], ...] = ()


@dataclass(frozen=True)
class Cancel:
    """Abort these prompts if they are running; `reason` becomes their finish reason."""

    prompt_ids: tuple[str, ...]
    reason: Literal["stopped", "cancelled"]


@dataclass(frozen=True)
class Embed:
    """Compute the pooled embedding of `text`."""

    request_id: int
    text: str
    normalize: bool


@dataclass(frozen=True)
class DropScope:
    """Forget everything the worker keeps for this scope."""

    scope_key: str


@dataclass(frozen=True)
class SaveScope:
    """Reply `ScopeState` with the conversation's KV state."""

    request_id: int
    scope_key: str


@dataclass(frozen=True)
class LoadScope:
    """Make this state the conversation's KV cache; reply `RequestDone` or `RequestFailed`."""

    request_id: int
    scope_key: str
    tokens: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class Shutdown:
    """Abort everything and exit."""


Command = Load | Submit | Cancel | Embed | DropScope | SaveScope | LoadScope | Shutdown


# ---------------------------------------------------------------- replies (up)


@dataclass(frozen=True)
class Hello:
    """The worker process is up and its interpreter imported the worker."""

    pid: int


@dataclass(frozen=True)
class Progress:
    """How far loading the weights has got, from 0.0 to 1.0."""

    fraction: float


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
    """

    description: str
    n_params: int
    size_bytes: int
    n_ctx: int
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    has_chat_template: bool


@dataclass(frozen=True)
class Loaded:
    """The model and context are ready."""

    info: ModelInfo


@dataclass(frozen=True)
class LoadFailed:
    """Loading failed; the worker exits after sending this."""

    kind: ErrorKind
    message: str


@dataclass(frozen=True)
class Started:
    """The worker began processing this prompt."""

    prompt_id: str


@dataclass(frozen=True)
class Tokens:
    """New text of one prompt (whole UTF-8 characters, stop strings held back)."""

    prompt_id: str
    text: str


@dataclass(frozen=True)
class Finished:
    """A prompt ended. `error` is set when `finish_reason` is "error"."""

    prompt_id: str
    finish_reason: Literal["stop", "length", "stopped", "cancelled", "error"]
    error: str | None
    prompt_tokens: int  # processed for this prompt
    cached_tokens: int  # reused from the conversation's KV cache
    dropped_turns: int  # oldest messages left out to fit the context
    completion_tokens: int
    prompt_eval_s: float
    generation_s: float


@dataclass(frozen=True)
class Embedding:
    """The answer to `Embed`."""

    request_id: int
    vector: tuple[float, ...]


@dataclass(frozen=True)
class ScopeState:
    """The answer to `SaveScope`: the tokens in the KV and llama.cpp's sequence state."""

    request_id: int
    tokens: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class RequestDone:
    """A request that returns nothing (e.g. `LoadScope`) succeeded."""

    request_id: int


@dataclass(frozen=True)
class RequestFailed:
    """A non-prompt request (e.g. `Embed`) failed; the worker carries on."""

    request_id: int
    kind: ErrorKind
    message: str


Reply = (
    Hello
    | Progress
    | Loaded
    | LoadFailed
    | Started
    | Tokens
    | Finished
    | Embedding
    | ScopeState
    | RequestDone
    | RequestFailed
)
Message = Command | Reply

_ALLOWED = {
    cls.__name__: cls
    for cls in (
        Load,
        Submit,
        Cancel,
        Embed,
        DropScope,
        SaveScope,
        LoadScope,
        Shutdown,
        Hello,
        Progress,
        ModelInfo,
        Loaded,
        LoadFailed,
        Started,
        Tokens,
        Finished,
        Embedding,
        ScopeState,
        RequestDone,
        RequestFailed,
        LlamaLoad,
        ModelParams,
        ContextParams,
        SamplerParams,
    )
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        cls = _ALLOWED.get(name)
        if cls is None or cls.__module__ != module:
            raise pickle.UnpicklingError(f"unexpected type in a frame: {module}.{name}")
        return cls


def encode(message: Message) -> bytes:
    """The frame for one message: length header and payload."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


def decode(payload: bytes) -> Message:
    """The message in one frame's payload (without its header)."""
    message = _Unpickler(io.BytesIO(payload)).load()
    if type(message).__name__ not in _ALLOWED or isinstance(
        message, (LlamaLoad, ModelParams, ContextParams, SamplerParams, ModelInfo)
    ):
        raise pickle.UnpicklingError(f"a frame holds {type(message).__name__}, not a message")
    return message  # type: ignore[no-any-return]


def frame_length(header: bytes) -> int:
    """The payload length a header announces; raises ValueError on an absurd one."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes announced; the channel is corrupt")
    return int(length)
