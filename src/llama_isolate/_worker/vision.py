"""Images through llama.cpp's mtmd: encoded bytes -> bitmaps -> chunks -> KV.

A prompt with images is tokenized by mtmd into text chunks and image chunks.
Text tokens join the engine's shared batches as usual; an image chunk is
encoded by the projector and its embeddings decoded into the sequence on its
own (`mtmd_helper_eval_chunk_single`, which the abort flag can interrupt).

In the slot's token list an image occupies its positions as placeholder ids:
negative numbers derived from the image's content hash, so the prefix match
that reuses a conversation's KV cache also recognises an image it already
holds and does not encode it again.

mtmd splits the prompt at a marker string. The public `MEDIA_MARKER` is
what callers write; the worker gives mtmd a private marker instead, made up
afresh in each worker process, and puts it only where a turn really has an
image. So a text turn that merely mentions ``<__media__>`` stays text, and
no prompt text can forge an image position.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Sequence

import llama_cpp as C
import llama_cpp.mtmd_cpp as M

from .._images import MEDIA_MARKER, image_size
from .llama import LoadFailure
from .prompt import PRIVATE_MARKER, ImageChunk, Item, Prompt

_PLACEHOLDER_SPACE = 2**31 - 2


class ImageError(Exception):
    """An image could not be used; the prompt fails with this message."""


class Vision:
    """The loaded projector: turns text with media markers and images into items."""

    def __init__(self, mtmd: int, max_pixels: int, max_prompt_pixels: int) -> None:
        self._mtmd = mtmd
        self._max_pixels = max_pixels
        self._max_prompt_pixels = max_prompt_pixels
        if M.mtmd_decode_use_mrope(mtmd):
            raise LoadFailure(
                "invalid_mmproj", "this projector needs M-RoPE positions (Qwen-VL family), which are not supported yet"
            )
        if not M.mtmd_support_vision(mtmd):
            raise LoadFailure(
                "invalid_mmproj", "this projector has no vision encoder (audio-only projectors are not supported)"
            )

    @staticmethod
    def mark(content: str, n_images: int) -> str:
        """A turn's content with its `n_images` public markers made private (a turn without images keeps its text)."""
        if n_images == 0:
            return content
        if content.count(MEDIA_MARKER) != n_images:
            raise ImageError(
                f"a turn has {content.count(MEDIA_MARKER)} image markers ({MEDIA_MARKER}) for {n_images} images"
            )
        return content.replace(MEDIA_MARKER, PRIVATE_MARKER)

    def tokenize(self, text: str, images: Sequence[tuple[str, bytes]], *, parse_special: bool) -> Prompt:
        """Split `text` at its private markers and put `images` there, in order; raises `ImageError`."""
        if text.count(PRIVATE_MARKER) != len(images):
            raise ImageError(f"the prompt has {text.count(PRIVATE_MARKER)} image positions for {len(images)} images")
        if "\x00" in text:
            raise ImageError("a prompt with images must not contain NUL characters (mtmd reads it as a C string)")
        self._check_total(images)
        bitmaps: list[int] = []
        decoded = 0
        try:
            for name, data in images:
                bitmaps.append(self._bitmap(name, data))
                decoded += int(M.mtmd_bitmap_get_nx(bitmaps[-1])) * int(M.mtmd_bitmap_get_ny(bitmaps[-1]))
                if decoded > self._max_prompt_pixels:  # a format whose header told nothing
                    raise ImageError(self._too_many(decoded))
            return self._chunks(text, bitmaps, [_digest(data) for _, data in images], parse_special)
        finally:
            for bitmap in bitmaps:
                M.mtmd_bitmap_free(bitmap)

    def _check_total(self, images: Sequence[tuple[str, bytes]]) -> None:
        """Refuse images whose headers add up to more pixels than a prompt may hold, before decoding any."""
        total = 0
        for _, data in images:
            size = image_size(data)
            if size is not None:
                total += size[0] * size[1]
        if total > self._max_prompt_pixels:
            raise ImageError(self._too_many(total))

    def _too_many(self, pixels: int) -> str:
        return (
            f"the prompt's images have {pixels} pixels together, more than LlamaLoad.max_prompt_pixels "
            f"({self._max_prompt_pixels}); nothing was decoded past that"
        )

    def _bitmap(self, name: str, data: bytes) -> int:
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = M.mtmd_helper_bitmap_init_from_buf(self._mtmd, buf, len(data), False)
        if not bitmap:
            raise ImageError(f"image {name!r} could not be decoded (not a PNG, JPEG, BMP or GIF, or corrupt)")
        width, height = int(M.mtmd_bitmap_get_nx(bitmap)), int(M.mtmd_bitmap_get_ny(bitmap))
        if width * height > self._max_pixels:
            M.mtmd_bitmap_free(bitmap)
            raise ImageError(
                f"image {name!r} is {width}x{height} pixels, more than LlamaLoad.max_image_pixels ({self._max_pixels})"
            )
        return int(bitmap)

    def _chunks(self, text: str, bitmaps: list[int], digests: list[int], parse_special: bool) -> Prompt:
        encoded = text.encode("utf-8")
        source = M.mtmd_input_text(encoded, len(encoded), True, parse_special)
        array = (M.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
        handle = M.mtmd_input_chunks_init()
        rc = M.mtmd_tokenize(self._mtmd, handle, ctypes.byref(source), array, len(bitmaps))
        if rc != 0:
            M.mtmd_input_chunks_free(handle)
            raise ImageError(f"mtmd could not tokenize the prompt with its images (code {rc})")
        items: list[Item] = []
        next_digest = iter(digests)  # image chunks come in marker order, as the images do
        for i in range(M.mtmd_input_chunks_size(handle)):
            chunk = M.mtmd_input_chunks_get(handle, i)
            if M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                tokens = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                items.extend(tokens[j] for j in range(count.value))
            else:
                items.append(ImageChunk(int(chunk), _placeholders(next(next_digest), chunk)))
        return Prompt(items, lambda: M.mtmd_input_chunks_free(handle))

    def evaluate(self, ctx: int, image: ImageChunk, *, n_past: int, seq_id: int, n_batch: int, last: bool) -> int:
        """Encode the image and decode its embeddings into the sequence; llama.cpp's return code."""
        new_n_past = C.llama_pos(0)
        return int(
            M.mtmd_helper_eval_chunk_single(
                self._mtmd, ctx, image.chunk, n_past, seq_id, n_batch, last, ctypes.byref(new_n_past)
            )
        )


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _placeholders(digest: int, chunk: int) -> list[int]:
    """Negative ids (never a real token) unique to this image's content, one per position."""
    return [-1 - (digest + i) % _PLACEHOLDER_SPACE for i in range(M.mtmd_input_chunk_get_n_pos(chunk))]
