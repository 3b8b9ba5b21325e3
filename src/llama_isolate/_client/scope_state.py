"""The bytes of `LlamaScope.save_state()`: a conversation and its KV cache.

Layout: the magic line, a 4-byte big-endian header length, a JSON header
(format version, the model and cache it belongs to, the chat history, the
token count), the tokens as little-endian int32, then llama.cpp's own
sequence state.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from array import array
from dataclasses import dataclass
from typing import Any

from .._checks import check_history
from .._errors import LlamaStateError, LlamaTypeError
from .._events import ModelInfo
from .._images import LlamaImage
from .._params import LlamaLoad

MAGIC = b"llama-isolate scope state\n"
VERSION = 1
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class ScopeSnapshot:
    """A decoded state: whose it is, the history, and the KV cache."""

    model: str
    cache: str
    messages: list[dict[str, Any]]
    tokens: tuple[int, ...]
    data: bytes


def model_fingerprint(info: ModelInfo) -> str:
    """Identifies a model well enough to refuse another's state."""
    return f"{info.description}|{info.n_params} params|{info.size_bytes} bytes|{info.n_vocab} vocab|{info.n_embd} embd"


def cache_kind(load: LlamaLoad) -> str:
    """The KV cache's data types, which the state's bytes depend on."""
    return f"k={load.context_params.type_k},v={load.context_params.type_v}"


def pack(snapshot: ScopeSnapshot) -> bytes:
    header = json.dumps(
        {
            "version": VERSION,
            "model": snapshot.model,
            "cache": snapshot.cache,
            "messages": [_to_json(m) for m in snapshot.messages],
            "n_tokens": len(snapshot.tokens),
        }
    ).encode("utf-8")
    tokens = array("i", snapshot.tokens)
    if tokens.itemsize != 4:  # pragma: no cover - every platform we run on
        raise RuntimeError("int is not 32 bits here")
    if struct.pack("=i", 1) != struct.pack("<i", 1):  # pragma: no cover - big-endian host
        tokens.byteswap()
    return MAGIC + _LENGTH.pack(len(header)) + header + tokens.tobytes() + snapshot.data


def unpack(blob: bytes) -> ScopeSnapshot:
    """Decode `pack`'s bytes; raises `LlamaStateError` for anything else."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise LlamaTypeError(f"a scope state is bytes, got {type(blob).__name__}", param="data")
    blob = bytes(blob)
    if not blob.startswith(MAGIC):
        raise LlamaStateError("these bytes are not a llama_isolate scope state (save_state() makes them)")
    try:
        offset = len(MAGIC)
        (size,) = _LENGTH.unpack_from(blob, offset)
        offset += _LENGTH.size
        header = json.loads(blob[offset : offset + size].decode("utf-8"))
        offset += size
        n_tokens = int(header["n_tokens"])
        tokens = array("i")
        tokens.frombytes(blob[offset : offset + 4 * n_tokens])
        if struct.pack("=i", 1) != struct.pack("<i", 1):  # pragma: no cover - big-endian host
            tokens.byteswap()
        if len(tokens) != n_tokens or header["version"] != VERSION:
            raise ValueError("unexpected token count or version")
        messages = header["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("messages are not a list of dicts")
        messages = check_history([_from_json(m) for m in messages], "the state's messages")
        return ScopeSnapshot(
            str(header["model"]), str(header["cache"]), messages, tuple(tokens), blob[offset + 4 * n_tokens :]
        )
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError, binascii.Error) as exc:
        raise LlamaStateError(f"the scope state is damaged or truncated ({exc})") from exc


def _to_json(message: dict[str, Any]) -> dict[str, Any]:
    """A message as JSON: its images (if any) as base64."""
    if not message.get("images"):
        return message
    images = [{"name": image.name, "data": base64.b64encode(image.data).decode("ascii")} for image in message["images"]]
    return {**message, "images": images}


def _from_json(message: dict[str, Any]) -> dict[str, Any]:
    if not message.get("images"):
        return message
    images = message["images"]
    if not isinstance(images, list) or not all(isinstance(i, dict) for i in images):
        raise ValueError("a message's images are not a list of objects")
    images = tuple(LlamaImage(base64.b64decode(i["data"], validate=True), str(i["name"])) for i in images)
    return {**message, "images": images}
