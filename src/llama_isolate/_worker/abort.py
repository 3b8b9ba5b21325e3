"""A stop flag that llama.cpp checks inside `llama_decode`, at C speed.

ggml's CPU backend calls the context's abort callback before every graph node
(about 500 times per token for a 135M model). A Python callback there costs a
few percent of decode speed and must take the GIL each time. Instead the
callback is libc's `strlen`, called on a two-byte buffer we own: it returns 0
(keep going) while the buffer holds b"\\0", and 1 (abort) once we write
b"\\1". `strlen` returns `size_t` where llama.cpp expects `bool`; both ABIs
we run on (x86-64, aarch64) pass the result in the low byte of the same
register, and 0 and 1 are the only values the buffer can produce. Where libc
cannot be found, a Python callback does the same job more slowly.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import llama_cpp as C


class AbortFlag:
    """Set from any thread; read by llama.cpp during decode."""

    def __init__(self) -> None:
        self._buffer = ctypes.create_string_buffer(2)
        self._py_callback = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
            address = ctypes.cast(libc.strlen, ctypes.c_void_p).value
            if not address:
                raise OSError("libc has no strlen")
            self._callback = C.ggml_abort_callback(address)
        except (OSError, AttributeError):  # pragma: no cover - no libc to borrow
            self._py_callback = C.ggml_abort_callback(lambda _data: self.is_set())
            self._callback = self._py_callback

    def install(self, ctx: int) -> None:
        """Make `llama_decode` on `ctx` return 2 (aborted) while the flag is set."""
        C.llama_set_abort_callback(ctx, self._callback, ctypes.cast(self._buffer, ctypes.c_void_p))

    def set(self) -> None:
        self._buffer[0] = b"\x01"

    def clear(self) -> None:
        self._buffer[0] = b"\x00"

    def is_set(self) -> bool:
        return self._buffer.raw[0] != 0
