"""The exceptions raised by llama_isolate.

Every exception the library raises on purpose derives from `LlamaError`::

    LlamaError
     ├── LlamaValueError             an argument's value is refused (also a ValueError); .param names it
     ├── LlamaTypeError              an argument of the wrong type (also a TypeError); .param names it
     ├── LlamaLoadError              init() failed; the worker is gone
     │    ├── LlamaModelNotFound     the model (or mmproj) path does not exist
     │    ├── LlamaInvalidModel      not a GGUF file, a directory, or llama.cpp refused it
     │    ├── LlamaInvalidMmproj     mmproj_path is not a projector mtmd can load for the model
     │    ├── LlamaOutOfMemory       the model or its context did not fit in memory
     │    ├── LlamaLoadTimeout       loading took longer than init(timeout=...)
     │    └── LlamaWorkerDiedOnLoad  the worker process died while loading (also a LlamaWorkerDied)
     ├── LlamaStatusError            a call not allowed in the current status (before init, after dispose)
     ├── LlamaFeatureNotEnabled      embeddings without embeddings=True, images without mmproj_path
     ├── LlamaQueueFull              max_queue prompts are already waiting
     ├── LlamaRequestError           one request (e.g. an embedding) failed; the worker carries on
     │    ├── LlamaStateError        a saved scope state is damaged or does not fit (also a LlamaValueError)
     │    ├── LlamaSchemaError       a json_schema= the grammar cannot enforce (also a LlamaValueError)
     │    └── LlamaContextLengthExceeded  a text has more tokens than can be processed at once
     └── LlamaWorkerDied             the worker process ended unexpectedly

A refused argument raises `LlamaValueError` or `LlamaTypeError` at once,
before anything is queued or sent: the class says what Python's own
`ValueError`/`TypeError` would, ``param`` which argument (or field inside it)
was wrong and ``code`` what kind of refusal it is.

Failures of a single prompt do not raise: they end that prompt with a
`CompletionEvent` whose `success` is False and whose `error` says why.

Example::

    try:
        await parent.init()
    except LlamaModelNotFound as exc:
        print("no such model:", exc)
"""

from __future__ import annotations

from typing import Any


class LlamaError(Exception):
    """Base class of every error raised by llama_isolate.

    Example::

        try:
            await parent.send_prompt("hi")
        except LlamaError as exc:
            log.warning("model unavailable: %s", exc)
    """


class _Refusal(LlamaError):
    """What `LlamaValueError` and `LlamaTypeError` share: the message, `param` and `code`."""

    default_code = "invalid_value"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code or self.default_code


class LlamaValueError(_Refusal, ValueError):
    """An argument, or a field inside one, has a value the library refuses; nothing was queued or sent.

    It is also a `ValueError`, so ``except ValueError`` still catches it. The
    message says what is wrong for a person; two attributes say it for a
    program:

    - ``param``: the argument or field, as the caller wrote it, in OpenAI's
      notation: ``"max_tokens"``, ``"sampler_params.temperature"``,
      ``"context_params.n_ctx"``, ``"path"`` (a `LlamaLoad` field),
      ``"messages[3].content"``, ``"messages[0].tool_calls[1].function.arguments"``,
      ``"tools[1].function.name"``, ``"tool_choice"``, ``"json_schema"``,
      ``"images[0]"``; None when no single argument is to blame.
    - ``code``, one of OpenAI's error codes:

      - ``"invalid_value"``: the value is refused (out of range, malformed,
        empty, or at odds with another argument);
      - ``"invalid_type"``: the value has the wrong type (a str where an int
        goes). Checks that raised `ValueError` for a wrong type before keep
        doing so, with this code; the others raise `LlamaTypeError`;
      - ``"invalid_schema"``: a JSON schema the grammar cannot enforce (a
        `LlamaSchemaError`).

    Example::

        try:
            await parent.send_prompt("Hi", max_tokens=0)
        except LlamaValueError as exc:
            print(exc.param, exc.code)  # max_tokens invalid_value
    """


class LlamaTypeError(_Refusal, TypeError):
    """An argument, or a field inside one, has the wrong type; nothing was queued or sent.

    It is also a `TypeError`, raised where the library raised `TypeError`
    before. Like `LlamaValueError` it has ``param`` (which argument) and
    ``code`` (always ``"invalid_type"``).

    Example::

        try:
            await parent.send_prompt_with_images("What is it?", ["cat.png"])
        except LlamaTypeError as exc:
            print(exc.param)  # images: LlamaImage objects are needed, not paths
    """

    default_code = "invalid_type"


class LlamaLoadError(LlamaError):
    """`init()` could not bring up a ready worker; no worker process is left behind.

    Example::

        try:
            await parent.init()
        except LlamaLoadError as exc:
            print("could not load the model:", exc)
    """


class LlamaModelNotFound(LlamaLoadError):
    """The model path (or `mmproj_path`) does not exist.

    Example::

        LlamaParent(LlamaLoad(path="missing.gguf"))  # init() raises LlamaModelNotFound
    """


class LlamaInvalidModel(LlamaLoadError):
    """The file is not a GGUF model llama.cpp can load (wrong magic, truncated, a directory).

    Example::

        # a text file renamed to .gguf:
        await LlamaParent(LlamaLoad(path="notes.gguf")).init()  # raises LlamaInvalidModel
    """


class LlamaInvalidMmproj(LlamaLoadError):
    """`LlamaLoad.mmproj_path` is not a multimodal projector llama.cpp's mtmd can load for the model.

    Example::

        load = LlamaLoad(path="model.gguf", mmproj_path="model.gguf")  # the model, not its projector
        await LlamaParent(load).init()  # raises LlamaInvalidMmproj
    """


class LlamaOutOfMemory(LlamaLoadError):
    """The model weights or the context (KV cache) did not fit in memory.

    Example::

        try:
            await parent.init()
        except LlamaOutOfMemory:
            ...  # retry with a smaller ContextParams(n_ctx=...)
    """


class LlamaLoadTimeout(LlamaLoadError):
    """Loading took longer than the `timeout` given to `init()`; the worker was killed.

    Example::

        await parent.init(timeout=5.0)  # raises LlamaLoadTimeout if the load takes longer
    """


class LlamaWorkerDied(LlamaError):
    """The worker process ended unexpectedly (killed, crashed inside llama.cpp).

    Pending prompts are failed with an event; awaiting callers get this error.

    Example::

        try:
            vector = await parent.get_embeddings("text")
        except LlamaWorkerDied:
            await parent.restart()
    """


class LlamaWorkerDiedOnLoad(LlamaLoadError, LlamaWorkerDied):
    """The worker process died while loading the model (for example killed for lack of memory).

    Example::

        try:
            await parent.init()
        except LlamaWorkerDiedOnLoad as exc:
            print(exc)  # names the exit code or signal
    """


class LlamaStatusError(LlamaError):
    """The call is not allowed in the parent's current `status`.

    Example::

        parent = LlamaParent(load)
        await parent.send_prompt("hi")  # raises LlamaStatusError: call init() first
    """


class LlamaFeatureNotEnabled(LlamaError):
    """The call needs a feature the `LlamaLoad` did not enable.

    Example::

        # without ContextParams(embeddings=True):
        await parent.get_embeddings("text")  # raises LlamaFeatureNotEnabled
    """


class LlamaQueueFull(LlamaError):
    """`max_queue` prompts are already waiting to start; nothing was queued.

    Example::

        parent = LlamaParent(load, max_queue=8)
        try:
            await parent.send_prompt("one more")
        except LlamaQueueFull:
            ...  # try again after a completion event
    """


class LlamaRequestError(LlamaError):
    """One request to the worker failed (for example a text too long to embed).

    The worker and the other prompts carry on.

    Example::

        try:
            await parent.get_embeddings(very_long_text)
        except LlamaRequestError as exc:
            print(exc)  # says how many tokens were needed and how many fit
    """


class LlamaStateError(LlamaRequestError, LlamaValueError):
    """A scope state given to `load_state()` is damaged, or does not fit this parent.

    The message says what differs (the model, the KV cache type, the context
    size) or which part is damaged (a malformed message names its field).
    It is also a `LlamaValueError` (and so a `ValueError`): the bytes are a
    bad value; its ``param`` is ``"data"`` (`load_state`'s argument) and its
    ``code`` ``"invalid_value"``.

    Example::

        try:
            await scope.load_state(data)
        except LlamaStateError as exc:
            print("cannot restore:", exc)
    """

    def __init__(self, message: str, *, param: str | None = "data", code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)


class LlamaSchemaError(LlamaRequestError, LlamaValueError):
    """A JSON schema given as `json_schema=` uses something the grammar cannot enforce, or is malformed.

    Nothing was queued. The message says what and why; `path` is a JSON
    pointer to the place in the schema ("" for the whole schema). See
    docs/structured-output.md for what is supported. It is also a
    `LlamaValueError` (and so a `ValueError`): the schema is a bad value.
    Its ``code`` is ``"invalid_schema"`` and its ``param`` the argument
    that held the schema: ``"json_schema"``, or a tool's parameters
    (``"tools[0].function.parameters"``).

    Example::

        try:
            await parent.send_prompt("An age?", json_schema={"type": "integer", "minimum": 0})
        except LlamaSchemaError as exc:
            print(exc.path, exc)  # /minimum 'minimum' is not supported: numeric bounds are not enforced ...
    """

    def __init__(self, message: str, path: str, *, param: str = "json_schema") -> None:
        super().__init__(f"{message} (at {path or 'the root'})", param=param, code="invalid_schema")
        self.reason = message
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        # The message is made from `reason` and `path`: rebuilt from them, not from the whole message.
        return (type(self), (self.reason, self.path), self.__dict__)


class LlamaContextLengthExceeded(LlamaRequestError):
    """A request's text needs more tokens than the model can take at once (for example a text to embed).

    The message says how many tokens it needed and how many fit. (A chat
    prompt that does not fit does not raise: its `CompletionEvent` has
    ``error_code="context_length_exceeded"``.)

    Example::

        try:
            await parent.get_embeddings(book)
        except LlamaContextLengthExceeded as exc:
            print("too long:", exc)
    """


def load_error(kind: str, message: str) -> LlamaLoadError:
    """The exception for a load the worker reported failed, by its kind (`protocol.LoadFailed.kind`)."""
    return _LOAD_ERRORS.get(kind, LlamaLoadError)(message)


def request_error(kind: str, message: str) -> LlamaError:
    """The exception for a request the worker refused, by its kind (`protocol.RequestFailed.kind`)."""
    return _REQUEST_ERRORS.get(kind, LlamaRequestError)(message)


_LOAD_ERRORS: dict[str, type[LlamaLoadError]] = {
    "not_found": LlamaModelNotFound,
    "invalid_model": LlamaInvalidModel,
    "invalid_mmproj": LlamaInvalidMmproj,
    "out_of_memory": LlamaOutOfMemory,
}
_REQUEST_ERRORS: dict[str, type[LlamaError]] = {
    "feature": LlamaFeatureNotEnabled,
    "state": LlamaStateError,
    "too_long": LlamaContextLengthExceeded,
}
