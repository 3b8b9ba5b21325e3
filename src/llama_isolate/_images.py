"""Images for `send_prompt_with_images`, and their size read from the file's header."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from ._errors import LlamaTypeError, LlamaValueError

MEDIA_MARKER = "<__media__>"
"""Where an image goes in a prompt's text (llama.cpp mtmd's default marker)."""

# JPEG start-of-frame markers (they carry the size); C4, C8 and CC are other segments.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, GIF or BMP header, without decoding; None for other data."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(int(width)), abs(int(height))
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    offset = 2
    while offset + 9 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # padding
            offset += 1
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return int(width), int(height)
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        offset += 2 + length
    return None


@dataclass(frozen=True)
class LlamaImage:
    """An encoded image (PNG, JPEG, BMP, ...) to put in a prompt.

    The bytes are decoded in the worker; a file that is not an image fails
    only the prompt it is in, with an error naming `name`.

    Example::

        image = LlamaImage.from_file("cat.png")
        pid = await parent.send_prompt_with_images("What is this?", [image])

    Attributes:
        data: the encoded image file's bytes.
        name: how errors refer to the image (the file name, or "image").
        width, height: the size read from a PNG, JPEG, GIF or BMP header
            (None for other formats), so that an image too large to decode
            is refused before anything decodes it.
    """

    data: bytes
    name: str = "image"
    width: int | None = field(default=None, init=False, compare=False)
    height: int | None = field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise LlamaTypeError(f"LlamaImage.data must be bytes, got {type(self.data).__name__}", param="data")
        if not self.data:
            raise LlamaValueError(f"LlamaImage {self.name!r} is empty", param="data")
        if not isinstance(self.name, str):
            raise LlamaTypeError(f"LlamaImage.name must be a str, got {type(self.name).__name__}", param="name")
        try:
            self.name.encode("utf-8")
        except UnicodeEncodeError:
            message = f"LlamaImage.name {self.name!r} is not valid text (a lone surrogate)"
            raise LlamaValueError(message, param="name") from None
        object.__setattr__(self, "data", bytes(self.data))
        size = image_size(self.data)
        if size is not None:
            object.__setattr__(self, "width", size[0])
            object.__setattr__(self, "height", size[1])

    @property
    def pixels(self) -> int | None:
        """width x height, or None when the header did not say.

        Example::

            if image.pixels and image.pixels > 4096 * 4096:
                ...
        """
        return None if self.width is None or self.height is None else self.width * self.height

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> LlamaImage:
        """Read an image file now (an unreadable path raises `OSError` here).

        Example::

            LlamaImage.from_file("photos/cat.jpg")
        """
        with open(path, "rb") as f:
            return cls(f.read(), os.path.basename(os.fspath(path)))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "image") -> LlamaImage:
        """Wrap encoded image bytes (for example from an upload).

        Example::

            LlamaImage.from_bytes(response.content, name="upload.png")
        """
        return cls(data, name)
