"""The only definition of what crosses the process boundary.

Commands go down (parent -> worker), replies come up (worker -> parent). Each
message is a small frozen dataclass; prompts are correlated by `prompt_id`,
other requests by `request_id`. Errors cross as data: an `ErrorKind` and a
sentence, which the parent maps to a public exception.

Requests are typed: each `Request` command has one reply type on success
(`REPLY_OF`), and `RequestFailed` otherwise.

On the wire a message is a 4-byte big-endian length followed by a pickle of
the dataclass. Decoding only accepts the classes defined here and the
parameter classes, so a frame can never name arbitrary code. `Tokens`, the
one message sent for every generated piece of text, has a plainer payload
(``T``, the prompt id's length and bytes, then the text), which costs the
parent a quarter of a pickle's decoding.
"""

from __future__ import annotations

import io
import pickle
import struct
from dataclasses import dataclass
from typing import Any, Literal, cast

from ._events import ErrorCode, FinishReason, ModelInfo
from ._params import ContextParams, LlamaLoad, ModelParams, SamplerParams, Speculative

ErrorKind = Literal[
    "not_found",  # a path does not exist
    "invalid_model",  # not a GGUF / llama.cpp refused the file
    "out_of_memory",  # weights or context did not fit
    "invalid_template",  # the chat template does not compile
    "invalid_mmproj",  # mmproj_path is not a projector mtmd can load for this model
    "feature",  # the load did not enable what the request needs
    "request",  # the request itself is bad (empty, ...)
    "too_long",  # the request needs more tokens than fit
    "state",  # a saved conversation state does not fit this worker
    "internal",  # an unexpected exception in the worker
]
CancelReason = Literal["stopped", "cancelled"]

HEADER = struct.Struct(">I")
_TOKENS = ord("T")  # a pickle payload starts with its PROTO opcode (0x80), never with this
_ID_LENGTH = struct.Struct(">H")
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
    scope_id: str
    messages: tuple[tuple[str, str], ...]
    sampler: SamplerParams
    max_tokens: int
    # Per message, the (name, encoded bytes) of the images at its media markers;
    # empty when the conversation has no images at all.
    images: tuple[tuple[tuple[str, bytes], ...], ...] = ()
    raw: bool = False  # the turns' text as it is, without the chat template
    logprobs: int | None = None  # send each token's log probability and this many alternatives
    tools: str | None = None  # the function specs (JSON) the chat template shows
    tool_markers: tuple[str, ...] = ()  # where a tool call starts in the reply: text from there on is the call's
    tool_grammar: str | None = None  # switched on once the marker is written (a whole call, marker included)
    n: int = 1  # choices: the prompt is read once, its KV copied to n-1 more slots, each with its own sampler
    trim: bool = True  # a conversation over the context loses its oldest turns (else it is refused)


@dataclass(frozen=True)
class Cancel:
    """Abort these prompts if they are running; `reason` becomes their finish reason."""

    prompt_ids: tuple[str, ...]
    reason: CancelReason


@dataclass(frozen=True)
class DropScope:
    """Forget everything the worker keeps for this scope."""

    scope_id: str


@dataclass(frozen=True)
class Shutdown:
    """Abort everything and exit."""


@dataclass(frozen=True)
class Embed:
    """Request: compute the pooled embedding of `text`; reply `Embedding`."""

    request_id: int
    text: str
    normalize: bool


@dataclass(frozen=True)
class SaveScope:
    """Request: the conversation's KV state; reply `ScopeState`."""

    request_id: int
    scope_id: str


@dataclass(frozen=True)
class LoadScope:
    """Request: make this state the conversation's KV cache; reply `RequestDone`."""

    request_id: int
    scope_id: str
    tokens: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class Probe:
    """Request: how many tokens of the prompt `turns` make a KV cache (in a slot or parked) holds; reply `Probed`."""

    request_id: int
    turns: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Ping:
    """Request: answer at once (from the worker's reader thread, even mid-decode); reply `Pong`."""

    request_id: int


Request = Embed | SaveScope | LoadScope | Probe | Ping
Command = Load | Submit | Cancel | DropScope | Shutdown | Request


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


# A sampled token: (id, its bytes, its log probability, the top (id, bytes, log probability) at its step).
Logprob = tuple[int, bytes, float, tuple[tuple[int, bytes, float], ...]]


@dataclass(frozen=True)
class Tokens:
    """New text of one prompt (whole UTF-8 characters, stop strings held back).

    With `Submit.logprobs`, one message per generated token (its text may be
    empty while held back), with that token's `Logprob`.
    """

    prompt_id: str
    text: str
    logprob: Logprob | None = None
    choice: int = 0  # which of the prompt's `Submit.n` choices
    call: str = ""  # new text of the reply's tool call (from its marker on), kept apart from `text`


@dataclass(frozen=True, kw_only=True)
class Finished:
    """A prompt ended. `error` is set when `finish_reason` is "error".

    Build it by keyword, or with `Finished.failed` / `Finished.unstarted` for
    a prompt that never produced anything.
    """

    prompt_id: str
    finish_reason: FinishReason
    error: str | None = None
    prompt_tokens: int = 0  # processed for this prompt
    cached_tokens: int = 0  # reused from the conversation's KV cache
    dropped_turns: int = 0  # oldest messages left out to fit the context
    completion_tokens: int = 0
    prompt_eval_s: float = 0.0
    generation_s: float = 0.0
    error_code: ErrorCode | None = None  # set when `error` is
    tool_text: str | None = None  # the reply from its tool-call marker on, if it wrote one
    choice: int = 0  # which of the prompt's choices ended (each ends once)
    forks: int = 0  # on choice 0: how many more choices were started (their Finished follow or came before)
    draft_tokens: int = 0  # speculative decoding: draft tokens verified
    draft_accepted: int = 0  # of them, kept in the reply

    @classmethod
    def failed(cls, prompt_id: str, error: str, error_code: ErrorCode = "invalid_prompt") -> Finished:
        """The prompt failed before it generated anything."""
        return cls(prompt_id=prompt_id, finish_reason="error", error=error, error_code=error_code)

    @classmethod
    def unstarted(cls, prompt_id: str, reason: CancelReason) -> Finished:
        """The prompt was cancelled before it was admitted."""
        return cls(prompt_id=prompt_id, finish_reason=reason)


@dataclass(frozen=True)
class Embedding:
    """The answer to `Embed`."""

    request_id: int
    vector: tuple[float, ...]
    tokens: int = 0


@dataclass(frozen=True)
class ScopeState:
    """The answer to `SaveScope`: the tokens in the KV and llama.cpp's sequence state."""

    request_id: int
    tokens: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class RequestDone:
    """The answer to `LoadScope`: it succeeded."""

    request_id: int


@dataclass(frozen=True)
class Pong:
    """The answer to `Ping`, with the engine's progress: a count that grows with every engine step and every
    prompt prepared (the parent notices a count that stops while there is work)."""

    request_id: int
    progress: int = 0


@dataclass(frozen=True)
class RequestFailed:
    """A request failed; the worker carries on."""

    request_id: int
    kind: ErrorKind
    message: str


@dataclass(frozen=True)
class Probed:
    """The answer to `Probe`: the prompt's tokens, and how many of them from its start a cache holds."""

    request_id: int
    cached: int
    total: int


Answer = Embedding | ScopeState | RequestDone | Probed | Pong
Reply = Hello | Progress | Loaded | LoadFailed | Started | Tokens | Finished | Answer | RequestFailed
Message = Command | Reply

REPLY_OF: dict[type[Request], type[Answer]] = {
    Embed: Embedding,
    SaveScope: ScopeState,
    LoadScope: RequestDone,
    Probe: Probed,
    Ping: Pong,
}
"""The reply type each request gets when it succeeds."""

_MESSAGES: tuple[type, ...] = (
    Load,
    Submit,
    Cancel,
    DropScope,
    Shutdown,
    Embed,
    SaveScope,
    LoadScope,
    Probe,
    Ping,
    Hello,
    Progress,
    Loaded,
    LoadFailed,
    Started,
    Tokens,
    Finished,
    Embedding,
    ScopeState,
    RequestDone,
    Probed,
    Pong,
    RequestFailed,
)
_PARTS: tuple[type, ...] = (ModelInfo, LlamaLoad, ModelParams, ContextParams, SamplerParams, Speculative)
_ALLOWED = {cls.__name__: cls for cls in _MESSAGES + _PARTS}
_ALLOWED_TYPES = frozenset(_ALLOWED.values())


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        cls = _ALLOWED.get(name)
        if cls is None or cls.__module__ != module:
            raise pickle.UnpicklingError(f"unexpected type in a frame: {module}.{name}")
        return cls


class _Pickler(pickle.Pickler):
    """Pickles a message only if the other side's `_Unpickler` can read it back.

    Plain values (exact str, int, float, bytes, tuples, lists, dicts, None,
    bools) never reach `reducer_override`; every other object does, and only
    the message and part classes pass. A subclass of str or int (an enum
    member, say) would otherwise be pickled by its class, which the reader
    refuses: the frame would kill the channel instead of failing one call.
    """

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in _ALLOWED_TYPES or (isinstance(obj, type) and obj in _ALLOWED_TYPES):  # an instance or class
            return NotImplemented  # pickled as usual
        kind = type(obj)
        raise TypeError(
            f"a {kind.__module__}.{kind.__qualname__} cannot be sent to the worker; give plain values "
            "(str, int, float, bool, bytes, and tuples or lists of them)"
        )


def sendable(value: object) -> None:
    """Raise `TypeError` naming the first object in `value` the worker could not read back."""
    _Pickler(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(value)


def _is_plain(tokens: Tokens) -> bool:
    """Only text, of a prompt's first choice: the frame carries just the id and the text."""
    return tokens.logprob is None and not tokens.choice and not tokens.call


def encode(message: Message) -> bytes:
    """The frame for one message: length header and payload."""
    if type(message) is Tokens and _is_plain(message):  # the hot path, without pickle
        prompt_id = message.prompt_id.encode("utf-8")
        payload = b"T" + _ID_LENGTH.pack(len(prompt_id)) + prompt_id + message.text.encode("utf-8", "surrogatepass")
    else:
        buffer = io.BytesIO()
        _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
        payload = buffer.getvalue()
    return HEADER.pack(len(payload)) + payload


def decode(payload: bytes | bytearray) -> Message:
    """The message in one frame's payload (without its header)."""
    if payload and payload[0] == _TOKENS:
        (length,) = _ID_LENGTH.unpack_from(payload, 1)
        end = 3 + length
        return Tokens(payload[3:end].decode("utf-8"), payload[end:].decode("utf-8", "surrogatepass"))
    message = _Unpickler(io.BytesIO(payload)).load()
    if not isinstance(message, _MESSAGES):
        raise pickle.UnpicklingError(f"a frame holds {type(message).__name__}, not a message")
    return cast(Message, message)


def frame_length(header: bytes | bytearray) -> int:
    """The payload length a header announces; raises ValueError on an absurd one."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes announced; the channel is corrupt")
    return int(length)
