"""Pictures for the image prompts: small real ones, and PNG headers that claim any size."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from llama_isolate import LlamaImage


def picture(color: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (48, 36)) -> LlamaImage:
    image = Image.new("RGB", size, color)
    for x in range(size[0]):  # a diagonal, so that the picture is not flat
        image.putpixel((x, x % size[1]), (255 - color[0], 255 - color[1], 128))
    data = io.BytesIO()
    image.save(data, fmt)
    return LlamaImage.from_bytes(data.getvalue(), name=f"{fmt.lower()}-{color}")


RED, BLUE = picture((200, 20, 20)), picture((20, 20, 200))


def png_header(width: int, height: int, rows: int = 0) -> bytes:
    """A grayscale PNG that says it is `width` x `height`, with `rows` real rows of pixels (0: just the header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes(width)
    pixels = b"".join(compressor.compress(row) for _ in range(rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
