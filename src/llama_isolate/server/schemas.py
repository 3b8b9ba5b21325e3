"""The request bodies the server reads, as OpenAI defines them; unknown fields are ignored.

Fields a later release will support (``n`` above 1) are read, and refused with
a 400 naming them, rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from .errors import ApiError

Temperature = Annotated[float, Field(strict=True, ge=0.0, le=2.0)]  # true and "0.5" are refused; 1 is 1.0
Count = Annotated[StrictInt, Field(ge=1)]  # "3", true and 2.0 are refused, as OpenAI does
Penalty = Annotated[float, Field(strict=True, ge=-2.0, le=2.0)]
Stop = str | Annotated[list[str], Field(max_length=16)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Request(_Lenient):
    """A whole request body: before any field is read, no string in it (a key included) may be a lone surrogate.

    JSON can spell one (``"\\ud800"``), and Python keeps it, but it has no UTF-8 form: it could reach neither
    llama.cpp nor an answer (an error message that quoted it once made a plain-text 500).
    """

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, data: Any) -> Any:
        where = lone_surrogate(data)
        if where is not None:
            raise ApiError(
                400,
                f"{where or 'the body'} holds a lone surrogate (a \\ud800-\\udfff escape without its pair), "
                "which has no UTF-8 form",
                param=where or None,
                code="invalid_value",
            )
        return data


def lone_surrogate(value: Any) -> str | None:
    """Where the first string holding a lone surrogate is in parsed JSON (``messages[0].content``), or None."""
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str):
            if not _encodes(item):
                return path
        elif isinstance(item, dict):
            for key, inner in item.items():
                name = key if _encodes(str(key)) else str(key).encode("utf-8", "backslashreplace").decode()
                if name is not key:
                    return f"{path}.{name}" if path else name
                pending.append((f"{path}.{key}" if path else str(key), inner))
        elif isinstance(item, list):
            pending.extend((f"{path}[{i}]", inner) for i, inner in enumerate(item))
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ImageURL(_Lenient):
    url: str


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(_Lenient):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(_Lenient):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Lenient):
    include_usage: StrictBool = False


class JsonSchemaFormat(_Lenient):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class Sampling(_Request):
    """What chat and text completions share."""

    model: str | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: Count | None = None
    stop: Stop | None = None
    temperature: Temperature | None = None
    top_p: Annotated[float, Field(strict=True, gt=0.0, le=1.0)] | None = None
    seed: StrictInt | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    n: Count | None = None
    logit_bias: dict[str, Annotated[float, Field(strict=True, ge=-100.0, le=100.0)]] | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Count | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=128)] | None = None
    tool_choice: Literal["auto", "required", "none"] | dict[str, Any] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    trim_history: StrictBool | None = None  # ours: leave the oldest turns out rather than answer 400


# Token ids (a list of ints, or of lists of ints), read only to be refused by name. Never empty: an empty list is no
# prompt at all, and must fail validation rather than reach a handler as one.
TokenIds = Annotated[list[StrictInt], Field(min_length=1)] | Annotated[list[list[StrictInt]], Field(min_length=1)]


class CompletionRequest(Sampling):
    # Token ids (a list of ints, or a list of such lists) are read to be refused by name: see `IDS_AS_INPUT`.
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] | TokenIds
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None
    echo: StrictBool = False
    suffix: str | None = None
    best_of: StrictInt | None = None


IDS_AS_INPUT = (
    "token ids are not taken as input yet: send the text (the server tokenizes it exactly as the model's own "
    "tokenizer would)"
)


def token_ids(value: object) -> bool:
    """Whether a ``prompt`` or ``input`` is given as token ids (a list of ints, or of lists of ints)."""
    return isinstance(value, list) and bool(value) and not isinstance(value[0], str)


class EmbeddingRequest(_Request):
    model: str | None = None
    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)] | TokenIds
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
