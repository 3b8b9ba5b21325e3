"""PromptOptions: everything about one prompt except its text, in one frozen object.

The object is made once, where a caller sends a prompt, and travels unchanged
through the queue to the command that starts it in the worker. Every facade
takes ``options=`` plus keyword overrides of its fields, so a new option is
one field here, not a keyword in every signature.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from ._checks import check_int, check_text, plain
from ._errors import LlamaTypeError, LlamaValueError
from ._images import LlamaImage
from ._params import SamplerParams

if TYPE_CHECKING:
    from ._grammar.tools import ToolChoice

MAX_LOGPROBS = 20  # alternatives per token, as OpenAI allows
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class PromptOptions:
    """How one prompt is to be answered: sampling, length, structure, tools, choices, images.

    Made once and passed as ``options=`` to `LlamaParent.generate`,
    `LlamaParent.send_prompt`, `LlamaScope.send_prompt` and their blocking
    twins; keywords given beside it override its fields
    (``send_prompt(text, options=opts, max_tokens=8)``). Fields are checked
    when the object is made; what depends on the model (``n`` against the
    slots, tools against the chat template) is checked when the prompt is sent.

    Example::

        options = PromptOptions(max_tokens=64, sampler_params=SamplerParams(temperature=0.2))
        handle = parent.generate("Name three rivers.", options)
        shorter = dataclasses.replace(options, max_tokens=16)

    Attributes:
        sampler_params: overrides `LlamaLoad.sampler_params` for this prompt.
        max_tokens: most tokens to generate (None: `ContextParams.n_predict`).
        raw: text completion: the model continues the conversation's text as
            it is, without the chat template (special tokens written in it,
            such as ``<|im_start|>``, are read as such). This is what a model
            without a template always gets.
        json_schema: the reply is JSON valid against this schema, enforced
            token by token by a grammar. A schema the grammar cannot enforce
            exactly raises `LlamaSchemaError`; nothing is ever relaxed. A
            reply cut by ``max_tokens`` ends with ``finish_reason="length"``
            and is then incomplete JSON. See docs/structured-output.md.
        logprobs: 0 to 20: each generated token comes with its log
            probability and this many most likely alternatives (see
            `TokenLogprob`). None (the default) costs nothing.
        tools: OpenAI-style function specs (``{"type": "function",
            "function": {"name", "description", "parameters"}}``) the model
            may call. The reply's calls are in `CompletionEvent.tool_calls`,
            their arguments valid against each function's parameters. See
            docs/tools.md.
        tool_choice: ``"auto"`` (the model chooses), ``"none"`` (never
            call), ``"required"`` (call one), or ``{"type": "function",
            "function": {"name": ...}}`` (call that one).
        tool_call_id: the prompt is the result of this call (a ``tool`` turn,
            not a user turn), for the model to carry on from.
        n: how many replies (1 to ``n_parallel``). The prompt is read once and
            its KV cache copied to n slots, which then decode together, each
            with its own sampler (a given seed plus the choice's index).
            `CompletionEvent.choices` holds them all; choice 0 is the event's
            `text`, the one streamed and kept in the conversation.
        images: pictures for the prompt (needs ``LlamaLoad(mmproj_path=...)``);
            each goes where the text has ``<__media__>`` (`MEDIA_MARKER`), in
            order, or before the text when it has no marker.
        stop: strings that end the reply (not included in it), used instead
            of the sampler's ``stop`` when given.
        trim_history: a conversation over the context loses its oldest turns
            (True) or fails with ``error_code="context_length_exceeded"``
            (False). None: the scope's `LlamaScope.trim_history` (True for the
            parent's own conversation and for `generate`).
    """

    sampler_params: SamplerParams | None = None
    max_tokens: int | None = None
    raw: bool = False
    json_schema: Mapping[str, Any] | None = None
    logprobs: int | None = None
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: ToolChoice = "auto"
    tool_call_id: str | None = None
    n: int = 1
    images: tuple[LlamaImage, ...] = ()
    stop: tuple[str, ...] | None = None
    trim_history: bool | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "logprobs", "n"):  # an IntEnum member is its plain int from here on
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and type(value) is not int:
                object.__setattr__(self, name, int(value))
        if self.sampler_params is not None and not isinstance(self.sampler_params, SamplerParams):
            raise LlamaTypeError(
                f"sampler_params must be a SamplerParams, got {type(self.sampler_params).__name__}",
                param="sampler_params",
            )
        if self.max_tokens is not None:
            check_int(self.max_tokens, "max_tokens", 1)
        if not isinstance(self.raw, bool):
            raise LlamaTypeError(f"raw must be a bool, got {type(self.raw).__name__}", param="raw")
        if self.logprobs is not None:
            check_int(self.logprobs, "logprobs", 0, MAX_LOGPROBS)
        check_int(self.n, "n", 1)
        if self.tools is None and not (isinstance(self.tool_choice, str) and self.tool_choice == "auto"):
            raise LlamaValueError("tool_choice needs tools (there is nothing to choose from)", param="tool_choice")
        if self.n > 1 and self.tools is not None:
            raise LlamaValueError("n above 1 cannot be combined with tools yet", param="n")
        if self.tool_call_id is not None:
            object.__setattr__(self, "tool_call_id", plain(check_text(self.tool_call_id, "tool_call_id")))
        if self.trim_history is not None and not isinstance(self.trim_history, bool):
            raise LlamaTypeError(
                f"trim_history must be a bool or None, got {type(self.trim_history).__name__}", param="trim_history"
            )
        object.__setattr__(self, "images", _images_of(self.images))
        if self.stop is not None:
            object.__setattr__(self, "stop", _stop_of(self.stop))


def _images_of(images: object) -> tuple[LlamaImage, ...]:
    """`images` as a tuple, if it is a sequence of `LlamaImage` (a str or one image is not)."""
    if isinstance(images, (str, bytes, LlamaImage)) or not isinstance(images, Sequence):
        raise LlamaTypeError(f"images must be a sequence of LlamaImage, got {type(images).__name__}", param="images")
    for i, image in enumerate(images):
        if not isinstance(image, LlamaImage):
            raise LlamaTypeError(f"images[{i}] must be a LlamaImage, got {type(image).__name__}", param=f"images[{i}]")
    return tuple(images)


def _stop_of(stop: object) -> tuple[str, ...]:
    """`stop` as a tuple, if it is a sequence of strings (one str is not: it would be its letters)."""
    if isinstance(stop, str) or not isinstance(stop, Sequence):
        raise LlamaTypeError(f"stop must be a sequence of strings, got {type(stop).__name__}", param="stop")
    return tuple(plain(check_text(text, f"stop[{i}]")) for i, text in enumerate(stop))


class PromptFields(TypedDict, total=False):
    """The keyword overrides every prompt-sending call takes: the fields of `PromptOptions`, by name.

    Example::

        fields: PromptFields = {"max_tokens": 32, "n": 2}
        await parent.send_prompt("Hi", **fields)
    """

    sampler_params: SamplerParams | None
    max_tokens: int | None
    raw: bool
    json_schema: Mapping[str, Any] | None
    logprobs: int | None
    tools: Sequence[Mapping[str, Any]] | None
    tool_choice: ToolChoice
    tool_call_id: str | None
    n: int
    images: Sequence[LlamaImage]
    stop: Sequence[str] | None
    trim_history: bool | None


_FIELDS = frozenset(field.name for field in dataclasses.fields(PromptOptions))


def options_of(options: PromptOptions | None, overrides: Mapping[str, Any], what: str) -> PromptOptions:
    """`options` (or the defaults) with `overrides` applied; `TypeError` names an unknown keyword."""
    if options is not None and not isinstance(options, PromptOptions):
        raise LlamaTypeError(f"options must be a PromptOptions, got {type(options).__name__}", param="options")
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise LlamaTypeError(
            f"{what}() got unexpected keyword {unknown[0]!r}; the options are {', '.join(sorted(_FIELDS))}",
            param=unknown[0],
        )
    base = options or PromptOptions()
    return dataclasses.replace(base, **overrides) if overrides else base


def takes_prompt_fields(function: F) -> F:
    """Show `function`'s ``**overrides`` as the fields of `PromptOptions`, keyword by keyword.

    Type checkers read ``Unpack[PromptFields]``; `inspect.signature`, `help()`
    and editors that look at the running code see each option as a keyword
    with its default, as if it were written out in every signature.
    """
    signature = inspect.signature(function)
    kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    names = {p.name for p in kept}
    defaults = PromptOptions()
    fields = [
        inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=getattr(defaults, field.name))
        for field in dataclasses.fields(PromptOptions)
        if field.name not in names
    ]
    function.__signature__ = signature.replace(parameters=[*kept, *fields])  # type: ignore[attr-defined]
    return function
