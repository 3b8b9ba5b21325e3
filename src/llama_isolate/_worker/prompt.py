"""A prompt as the engine feeds it: text tokens and image chunks, in position order."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

PRIVATE_MARKER = f"<__llama_isolate_image_{secrets.token_hex(8)}__>"
"""Where an image is in a prompt given to mtmd; made up afresh in each worker process (see `vision`)."""


@dataclass(eq=False)
class ImageChunk:
    """One image's mtmd chunk, and the placeholder ids that stand for its positions."""

    chunk: int
    ids: list[int]


Item = int | ImageChunk


@dataclass(eq=False)
class Prompt:
    """The items of one prompt; `free()` releases the mtmd chunks they point into."""

    items: list[Item]
    release: Callable[[], None] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        """Positions the prompt takes in the context."""
        return sum(len(item.ids) if isinstance(item, ImageChunk) else 1 for item in self.items)

    def flat(self) -> list[int]:
        """One id per position: tokens as they are, images as their placeholders."""
        flat: list[int] = []
        for item in self.items:
            if isinstance(item, ImageChunk):
                flat.extend(item.ids)
            else:
                flat.append(item)
        return flat

    def image_positions(self) -> int:
        return sum(len(item.ids) for item in self.items if isinstance(item, ImageChunk))

    def free(self) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()
