"""Checks of what callers hand over, made in the caller's process before anything is sent.

Anything that reaches the worker must be something it can encode: a `str`
with a lone surrogate (``"\\ud800"``, easily produced by ``surrogateescape``)
has no UTF-8 form, and would otherwise fail deep inside the worker. Each
check raises `LlamaValueError` (a `ValueError`) or `LlamaTypeError` (a
`TypeError`) whose message names the field for a person and whose ``param``
names it for a program (``messages[0].content``), so the caller learns which
value was wrong while nothing else is affected.

Each check takes the field's name as the caller knows it (``"max_tokens"``)
and uses it as the error's ``param``; where the message spells the field
differently (``messages[0]['content']``), the param is given beside it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._errors import LlamaTypeError, LlamaValueError
from ._images import MEDIA_MARKER, LlamaImage


def check_text(value: object, where: str, *, nul: bool = True, param: str | None = None) -> str:
    """`value` if it is a str that UTF-8 can encode (and, unless `nul`, without NUL characters).

    `where` names it in the message, `param` in the error (`where` when not given).
    """
    param = where if param is None else param
    if not isinstance(value, str):
        raise LlamaValueError(f"{where} must be a str, got {type(value).__name__}", param=param, code="invalid_type")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LlamaValueError(
            f"{where} is not valid text: character {exc.start} is a lone surrogate "
            f"({value[exc.start]!r}), which has no UTF-8 form",
            param=param,
        ) from None
    if not nul and "\x00" in value:
        raise LlamaValueError(f"{where} must not contain NUL characters (at index {value.index(chr(0))})", param=param)
    return value


def plain(text: str) -> str:
    """`text` as an exact `str` (a str subclass, such as a str enum member, keeps its characters, not its repr)."""
    return text if type(text) is str else str.__str__(text)


def check_int(value: object, where: str, lo: int, hi: int | None = None) -> int:
    """`value` if it is an int (not a bool) >= `lo` (and <= `hi`); `where` is the error's param too."""
    bounds = f">= {lo}" if hi is None else f"from {lo} to {hi}"
    message = f"{where} must be an int {bounds}, got {value!r}"
    if not isinstance(value, int) or isinstance(value, bool):
        raise LlamaValueError(message, param=where, code="invalid_type")
    if value < lo or (hi is not None and value > hi):
        raise LlamaValueError(message, param=where)
    return value


def check_images(images: object, max_pixels: int) -> tuple[LlamaImage, ...]:
    """`images` as a tuple if it is a non-empty sequence of `LlamaImage`, none larger than `max_pixels`."""
    if isinstance(images, LlamaImage):
        images = [images]
    if not isinstance(images, Sequence) or not images or not all(isinstance(i, LlamaImage) for i in images):
        raise LlamaTypeError("images must be a non-empty sequence of LlamaImage", param="images")
    for i, image in enumerate(images):
        if image.pixels is not None and image.pixels > max_pixels:
            raise LlamaValueError(
                f"image {image.name!r} is {image.width}x{image.height} = {image.pixels} pixels; "
                f"at most {max_pixels} are decoded (LlamaLoad.max_image_pixels)",
                param=f"images[{i}]",
            )
    return tuple(images)


def check_message(message: object, where: str, param: str | None = None) -> None:
    """Raise `LlamaValueError` naming the field unless `message` is a chat message the worker can use.

    A message is a dict with a "role" (a non-empty str) and a "content" (a
    str); a message with images also has "images", a sequence of
    `LlamaImage`, one per `MEDIA_MARKER` in its content. `where` names the
    message in the error's text (``messages[3]``), `param` in its ``param``
    (`where` when not given); its fields are named after it.
    """
    at = where if param is None else param
    if not isinstance(message, dict):
        raise LlamaValueError(
            f"{where} must be a dict with 'role' and 'content', got {type(message).__name__}",
            param=at,
            code="invalid_type",
        )
    for key in ("role", "content"):
        if key not in message:
            raise LlamaValueError(f"{where} has no {key!r}", param=f"{at}.{key}")
        check_text(message[key], f"{where}[{key!r}]", param=f"{at}.{key}")
    if not message["role"]:
        raise LlamaValueError(f"{where}['role'] is empty", param=f"{at}.role")
    if message.get("tool_calls"):
        _check_tool_calls(message["tool_calls"], f"{where}['tool_calls']", f"{at}.tool_calls")
    images = message.get("images")
    if images is None or (isinstance(images, Sequence) and not isinstance(images, (str, bytes)) and not images):
        return
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise LlamaValueError(
            f"{where}['images'] must be a sequence of LlamaImage, got {type(images).__name__}",
            param=f"{at}.images",
            code="invalid_type",
        )
    for i, image in enumerate(images):
        if not isinstance(image, LlamaImage):
            raise LlamaValueError(
                f"{where}['images'][{i}] must be a LlamaImage, got {type(image).__name__}",
                param=f"{at}.images[{i}]",
                code="invalid_type",
            )
    markers = message["content"].count(MEDIA_MARKER)
    if markers != len(images):
        raise LlamaValueError(
            f"{where} has {len(images)} images but its content has {markers} image markers ({MEDIA_MARKER})",
            param=f"{at}.content",
        )


def _check_tool_calls(calls: object, where: str, param: str) -> None:
    """An assistant's ``tool_calls``: OpenAI's shape, with arguments as a JSON object (or its text)."""
    if not isinstance(calls, list):
        raise LlamaValueError(f"{where} must be a list, got {type(calls).__name__}", param=param, code="invalid_type")
    for i, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        shape = f"{where}[{i}] must be {{'function': {{'name': str, 'arguments': ...}}}}"
        if not isinstance(function, dict):
            raise LlamaValueError(shape, param=f"{param}[{i}]", code="invalid_type")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise LlamaValueError(shape, param=f"{param}[{i}].function.name")
        named, at = f"{where}[{i}]['function']['arguments']", f"{param}[{i}].function.arguments"
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json_object_text(arguments)
            except ValueError as exc:
                raise LlamaValueError(f"{named} {exc}", param=at) from None
        if not isinstance(arguments, dict):
            raise LlamaValueError(f"{named} must be a JSON object", param=at, code="invalid_type")
        try:
            json.dumps(arguments, allow_nan=False)
        except (ValueError, TypeError, RecursionError) as exc:
            raise LlamaValueError(f"{named} cannot be written as JSON ({exc})", param=at) from None


def json_object_text(text: str) -> dict[str, Any]:
    """The JSON object `text` holds ("" is {}); `ValueError` saying why not (also for NaN, or nesting too deep).

    The message is a predicate for the caller to put after the field's name: "is not JSON".
    """

    def refuse(constant: str) -> None:
        raise ValueError(f"holds {constant}, which JSON does not allow")

    try:
        value = json.loads(text, parse_constant=refuse) if text.strip() else {}
    except json.JSONDecodeError:
        raise ValueError("is not JSON") from None
    except RecursionError:
        raise ValueError("is nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def check_history(history: object, where: str = "messages") -> list[dict[str, Any]]:
    """`history` if it is a list of valid chat messages; `LlamaValueError` naming the first bad one.

    Its entries' params are ``messages[i]...`` whatever `where` calls the list in the message.
    """
    if not isinstance(history, list):
        raise LlamaValueError(
            f"{where} must be a list of messages, got {type(history).__name__}", param="messages", code="invalid_type"
        )
    for i, message in enumerate(history):
        check_message(message, f"{where}[{i}]", f"messages[{i}]")
    return history


def check_messages(messages: object) -> list[dict[str, Any]]:
    """Check a conversation as `send_prompt` checks a `messages` list, without sending anything.

    Returns `messages` if every entry is a chat message the worker can use:
    a dict with a non-empty "role" and a "content" (text with a UTF-8 form),
    assistant "tool_calls" in OpenAI's shape whose arguments are a JSON
    object (or its text), and "images" (`LlamaImage`), one per `MEDIA_MARKER`
    in the content. Otherwise raises `LlamaValueError` naming the first bad
    entry: its ``param`` is the field (``"messages[2].tool_calls[0].function.arguments"``).

    Example::

        try:
            check_messages([{"role": "user", "content": "Hi"}, {"role": "assistant"}])
        except LlamaValueError as exc:
            print(exc.param, exc)  # messages[1].content messages[1] has no 'content'
    """
    return check_history(messages)
