"""Checks of what callers hand over, made in the caller's process before anything is sent.

Anything that reaches the worker must be something it can encode: a `str`
with a lone surrogate (``"\\ud800"``, easily produced by ``surrogateescape``)
has no UTF-8 form, and would otherwise fail deep inside the worker. Each
check raises `ValueError` naming the field, so the caller learns which value
was wrong while nothing else is affected.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._images import MEDIA_MARKER, LlamaImage


def check_text(value: object, where: str, *, nul: bool = True) -> str:
    """`value` if it is a str that UTF-8 can encode (and, unless `nul`, without NUL characters)."""
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{where} is not valid text: character {exc.start} is a lone surrogate "
            f"({value[exc.start]!r}), which has no UTF-8 form"
        ) from None
    if not nul and "\x00" in value:
        raise ValueError(f"{where} must not contain NUL characters (at index {value.index(chr(0))})")
    return value


def check_int(value: object, where: str, lo: int, hi: int | None = None) -> int:
    """`value` if it is an int (not a bool) >= `lo` (and <= `hi`)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"from {lo} to {hi}"
        raise ValueError(f"{where} must be an int {bounds}, got {value!r}")
    return value


def check_images(images: object, max_pixels: int) -> tuple[LlamaImage, ...]:
    """`images` as a tuple if it is a non-empty sequence of `LlamaImage`, none larger than `max_pixels`."""
    if isinstance(images, LlamaImage):
        images = [images]
    if not isinstance(images, Sequence) or not images or not all(isinstance(i, LlamaImage) for i in images):
        raise TypeError("images must be a non-empty sequence of LlamaImage")
    for image in images:
        if image.pixels is not None and image.pixels > max_pixels:
            raise ValueError(
                f"image {image.name!r} is {image.width}x{image.height} = {image.pixels} pixels; "
                f"at most {max_pixels} are decoded (LlamaLoad.max_image_pixels)"
            )
    return tuple(images)


def check_message(message: object, where: str) -> None:
    """Raise `ValueError` naming the field unless `message` is a chat message the worker can use.

    A message is a dict with a "role" (a non-empty str) and a "content" (a
    str); a message with images also has "images", a sequence of
    `LlamaImage`, one per `MEDIA_MARKER` in its content.
    """
    if not isinstance(message, dict):
        raise ValueError(f"{where} must be a dict with 'role' and 'content', got {type(message).__name__}")
    for key in ("role", "content"):
        if key not in message:
            raise ValueError(f"{where} has no {key!r}")
        check_text(message[key], f"{where}[{key!r}]")
    if not message["role"]:
        raise ValueError(f"{where}['role'] is empty")
    if message.get("tool_calls"):
        _check_tool_calls(message["tool_calls"], f"{where}['tool_calls']")
    images = message.get("images")
    if images is None or (isinstance(images, Sequence) and not isinstance(images, (str, bytes)) and not images):
        return
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise ValueError(f"{where}['images'] must be a sequence of LlamaImage, got {type(images).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, LlamaImage):
            raise ValueError(f"{where}['images'][{i}] must be a LlamaImage, got {type(image).__name__}")
    markers = message["content"].count(MEDIA_MARKER)
    if markers != len(images):
        raise ValueError(
            f"{where} has {len(images)} images but its content has {markers} image markers ({MEDIA_MARKER})"
        )


def _check_tool_calls(calls: object, where: str) -> None:
    """An assistant's ``tool_calls``: OpenAI's shape, with arguments as a JSON object (or its text)."""
    if not isinstance(calls, list):
        raise ValueError(f"{where} must be a list, got {type(calls).__name__}")
    for i, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ValueError(f"{where}[{i}] must be {{'function': {{'name': str, 'arguments': ...}}}}")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json_object_text(arguments)
            except ValueError as exc:
                raise ValueError(f"{where}[{i}]['function']['arguments'] {exc}") from None
        if not isinstance(arguments, dict):
            raise ValueError(f"{where}[{i}]['function']['arguments'] must be a JSON object")
        try:
            json.dumps(arguments, allow_nan=False)
        except (ValueError, TypeError, RecursionError) as exc:
            raise ValueError(f"{where}[{i}]['function']['arguments'] cannot be written as JSON ({exc})") from None


def json_object_text(text: str) -> dict[str, Any]:
    """The JSON object `text` holds ("" is {}); `ValueError` saying why not (also for NaN, or nesting too deep)."""

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
    """`history` if it is a list of valid chat messages; `ValueError` naming the first bad one."""
    if not isinstance(history, list):
        raise ValueError(f"{where} must be a list of messages, got {type(history).__name__}")
    for i, message in enumerate(history):
        check_message(message, f"{where}[{i}]")
    return history
