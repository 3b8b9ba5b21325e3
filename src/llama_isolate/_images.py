"""Images for `send_prompt_with_images`."""

from __future__ import annotations

import os
from dataclasses import dataclass

MEDIA_MARKER = "<__media__>"
"""Where an image goes in a prompt's text (llama.cpp mtmd's default marker)."""


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
    """

    data: bytes
    name: str = "image"

    def __post_init__(self) -> None:
        if not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise TypeError(f"LlamaImage.data must be bytes, got {type(self.data).__name__}")
        if not self.data:
            raise ValueError(f"LlamaImage {self.name!r} is empty")
        object.__setattr__(self, "data", bytes(self.data))

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
