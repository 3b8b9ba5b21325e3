"""OpenAI request bodies become what `LlamaScope.send_prompt` takes: history, prompt, images, sampling.

Choices where OpenAI leaves something open (written down in docs/server.md):
- ``developer`` messages are system messages;
- the last message must be the user's (the model answers it);
- an image is a ``data:`` URI (no downloads); it needs a model loaded with
  an mmproj;
- sampling fields that are not given keep the server's `SamplerParams`
  (``temperature`` 0 means greedy);
- ``max_completion_tokens`` wins over ``max_tokens``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llama_isolate import MEDIA_MARKER, LlamaImage, LlamaValueError, PromptOptions, SamplerParams, check_messages

from .errors import ApiError, refused_as_api_error
from .schemas import ChatCompletionRequest, ChatMessage, ImagePart, ResponseFormat, Sampling, TextPart

_DATA_URI = re.compile(r"data:(?P<mime>[\w.+/-]*)(?P<params>(;[\w=.+-]+)*?);base64,(?P<data>.*)", re.DOTALL)


@dataclass(frozen=True)
class Turn:
    """A request's conversation, whose last message is the one to answer, and how to answer it."""

    messages: list[dict[str, Any]]
    options: PromptOptions


def chat_turn(body: ChatCompletionRequest, *, images_allowed: bool, trim_history: bool = False) -> Turn:
    """The scope history and the prompt of a chat request; `ApiError` 400 names what is wrong.

    `trim_history` is the server's choice for a conversation over the context; the request's own
    ``trim_history`` (an extension of ours) overrides it.
    """
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    messages = body.messages
    last = messages[-1]
    if last.role not in ("user", "tool"):
        raise ApiError(
            400,
            f"the last message must be the user's or a tool's result (it is {last.role!r}): the model answers it",
            param=f"messages[{len(messages) - 1}].role",
            code="invalid_value",
        )
    history = [_message(m, i, images_allowed) for i, m in enumerate(messages[:-1])]
    prompt = _message(last, len(messages) - 1, images_allowed)
    _check_conversation([*history, prompt])
    schema = response_schema(body.response_format)
    if body.tools and schema is not None:
        raise ApiError(400, "tools and a JSON response_format exclude each other", param="response_format")
    if body.tool_choice is not None and not body.tools:
        raise ApiError(400, "tool_choice needs tools", param="tool_choice")
    options = prompt_options(
        json_schema=schema,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        tools=body.tools,
        tool_choice=body.tool_choice or "auto",
        n=body.n or 1,
        trim_history=trim_history if body.trim_history is None else body.trim_history,
    )
    return Turn([*history, prompt], options)


def prompt_options(**fields: Any) -> PromptOptions:
    """`PromptOptions` of a request's fields; `ApiError` 400 (naming the request's field) if the library refuses one."""
    with refused_as_api_error(None):
        return PromptOptions(**fields)


def response_schema(fmt: ResponseFormat | None) -> Mapping[str, Any] | None:
    """The JSON schema `response_format` asks for (``json_object``: any object), or None for text."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise ApiError(
            400, "response_format json_schema needs json_schema.schema", param="response_format.json_schema.schema"
        )
    return fmt.json_schema.schema_


def _check_conversation(messages: list[dict[str, Any]]) -> None:
    """The library's checks of a conversation (a tool call's arguments, one marker per image), as a 400 naming the
    field: the index of each message is the request's, the last one is the prompt."""
    with refused_as_api_error("messages"):
        check_messages(messages)


def _message(message: ChatMessage, index: int, images_allowed: bool) -> dict[str, Any]:
    where = f"messages[{index}]"
    role = "system" if message.role == "developer" else message.role
    content = message.content
    if role == "tool" or message.tool_calls:
        return _tool_message(message, where)
    if content is None:
        if role != "assistant":
            raise ApiError(400, f"{where} has no content", param=f"{where}.content")
        return {"role": role, "content": ""}
    if isinstance(content, str):
        return {"role": role, "content": content}
    texts: list[str] = []
    images: list[LlamaImage] = []
    for j, part in enumerate(content):
        if isinstance(part, ImagePart):
            if role != "user":
                raise ApiError(400, "only user messages may hold images", param=f"{where}.content[{j}]")
            if not images_allowed:
                raise ApiError(
                    400,
                    "this model takes no images (start the server with --mmproj)",
                    param=f"{where}.content[{j}]",
                    code="images_not_supported",
                )
            images.append(_image(part.image_url.url, f"{where}.content[{j}].image_url.url"))
            texts.append(MEDIA_MARKER)
        else:
            texts.append(part.text)
    out: dict[str, Any] = {"role": role, "content": "".join(texts)}
    if images:
        out["images"] = images
    return out


def _logit_bias(biases: dict[str, float], n_vocab: int) -> dict[int, float]:
    """OpenAI's ``{"token id": bias}`` as token ids; 400 for a key that is not one of the model's tokens."""
    out = {}
    for key, bias in biases.items():
        if not key.isascii() or not key.isdigit() or len(key) > 10 or key != str(int(key)) or int(key) >= n_vocab:
            raise ApiError(
                400,
                f"logit_bias key {key!r} is not a token id of this model (0..{n_vocab - 1})",
                param="logit_bias",
                code="invalid_value",
            )
        out[int(key)] = bias
    return out


def _tool_message(message: ChatMessage, where: str) -> dict[str, Any]:
    """A tool's result, or an assistant's message with its tool calls."""
    content = message.content
    if message.role == "tool":
        if not message.tool_call_id:
            raise ApiError(400, f"{where} is a tool result without tool_call_id", param=f"{where}.tool_call_id")
        if content is None:
            raise ApiError(400, f"{where} is a tool result without content", param=f"{where}.content")
        if not isinstance(content, str):  # text parts, as LangChain's ToolMessage and MCP adapters send
            for j, part in enumerate(content):
                if not isinstance(part, TextPart):
                    raise ApiError(400, "a tool result's parts must be text", param=f"{where}.content[{j}]")
            content = "".join(part.text for part in content if isinstance(part, TextPart))
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": content}
    if message.role != "assistant":
        raise ApiError(400, f"{where}: only assistant messages make tool calls", param=f"{where}.tool_calls")
    text = content if isinstance(content, str) else ""
    calls = [call.model_dump() for call in message.tool_calls or ()]  # checked with the conversation
    return {"role": "assistant", "content": text, "tool_calls": calls}


def _image(url: str, param: str) -> LlamaImage:
    match = _DATA_URI.fullmatch(url.strip())
    if match is None:
        raise ApiError(
            400, "an image must be a base64 data: URI (the server downloads nothing)", param=param, code="invalid_image"
        )
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "the image's base64 data is malformed", param=param, code="invalid_image") from None
    try:
        return LlamaImage.from_bytes(data, name=param)
    except LlamaValueError as exc:  # its param names LlamaImage's argument; the request's field is this one
        raise ApiError(400, f"the image is not usable: {exc}", param=param, code="invalid_image") from None


def sampler(base: SamplerParams, body: Sampling, *, n_vocab: int) -> SamplerParams:
    """`base` with the fields the request sets; `ApiError` 400 names a value the sampler refuses."""
    changes: dict[str, Any] = {}
    if body.logit_bias:
        changes["logit_bias"] = _logit_bias(body.logit_bias, n_vocab)
    if body.temperature is not None:
        changes["temperature"] = body.temperature
        changes["greedy"] = body.temperature == 0
    if body.top_p is not None:
        changes["top_p"] = body.top_p
    if body.seed is not None:
        changes["seed"] = body.seed
    if body.presence_penalty is not None:
        changes["presence_penalty"] = body.presence_penalty
    if body.frequency_penalty is not None:
        changes["frequency_penalty"] = body.frequency_penalty
    if body.stop is not None:
        stops = [body.stop] if isinstance(body.stop, str) else body.stop
        changes["stop"] = tuple(s for s in stops if s)
    with refused_as_api_error(None):  # the error's param names the field: sampler_params.seed is the request's seed
        return dataclasses.replace(base, **changes)
