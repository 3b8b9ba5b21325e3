"""Sequence states: copied out of and into a context, and saved in a form any worker can load.

llama.cpp's sequence state (`llama_state_seq_get_data`) is a small header
(a magic number and the sequence id) followed by the memory's state. With one
KV stream per sequence (our layout), a KV cache writes its stream count and
then every stream: an empty one is a zero cell count, the sequence's own holds
its cells. A model with a sliding window keeps two such caches, one after the
other (the window's can be read alone). llama.cpp refuses a state whose
stream count differs from the context's, although only one stream holds
anything: a state saved by a parent with `n_parallel=1` did not load into one
with `n_parallel=2` (or with embeddings, which adds a sequence).

So a saved state is kept in a portable form: each cache reduced to its one
non-empty stream, and expanded again for the receiving context's stream
count. A memory laid out otherwise (recurrent models) is kept as llama.cpp
wrote it, and then loads only where the stream count matches.
"""

from __future__ import annotations

import ctypes
import struct

import llama_cpp as C

from .cache import ParkedState, Slot

_PORTABLE = b"LIS1"
_RAW = b"LISR"
_U32 = struct.Struct("<I")
_HEAD = 8  # llama.cpp's magic (u32) and the sequence id (i32)
_PARTIAL_ONLY = 1  # LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY: a sliding-window model's window cache only


class StateMismatch(ValueError):
    """A saved state cannot be placed in this context; the message says what differs."""


def capture(ctx: int, slot: Slot) -> ParkedState:
    """The slot's sequence state as bytes (the KV stays in the context)."""
    size = C.llama_state_seq_get_size(ctx, slot.seq_id)
    buf = (ctypes.c_uint8 * size)()
    written = C.llama_state_seq_get_data(ctx, buf, size, slot.seq_id)
    window = int(C.llama_state_seq_get_size_ext(ctx, slot.seq_id, _PARTIAL_ONLY)) - _HEAD
    return ParkedState(tuple(slot.tokens), bytes(buf)[:written], slot.seq_id, max(0, window))


def restore(ctx: int, slot: Slot, state: ParkedState) -> bool:
    """Load a captured state into the (empty) slot's sequence; False if llama.cpp refused it."""
    if not state.data:
        return not state.tokens
    buf = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
    if C.llama_state_seq_set_data(ctx, buf, len(state.data), slot.seq_id) == 0:
        return False
    slot.tokens = list(state.tokens)
    return True


def copy(ctx: int, source: Slot, target: Slot) -> bool:
    """Copy `source`'s sequence state into the empty `target` slot; False if llama.cpp refused it.

    The bytes go from one sequence to the other through one buffer, without
    the copies `capture` makes to keep them.
    """
    size = C.llama_state_seq_get_size(ctx, source.seq_id)
    buf = (ctypes.c_uint8 * size)()
    written = C.llama_state_seq_get_data(ctx, buf, size, source.seq_id)
    if not written or C.llama_state_seq_set_data(ctx, buf, written, target.seq_id) == 0:
        return False
    target.tokens = list(source.tokens)
    return True


def to_portable(state: ParkedState, n_stream: int) -> bytes:
    """A captured state in a form a context with any stream count can load (empty for an empty state)."""
    if len(state.data) <= _HEAD:
        return b""
    body = state.data[_HEAD:]
    parts = [body]
    if 0 < state.window < len(body):
        parts = [body[: -state.window], body[-state.window :]]
    singles = [_one_stream(part, state.seq_id, n_stream) for part in parts]
    if any(single is None for single in singles):
        return _RAW + _U32.pack(n_stream) + state.data
    out = [_PORTABLE, state.data[:4], _U32.pack(len(parts))]
    for single in singles:
        assert single is not None
        out += [_U32.pack(len(single)), single]
    return b"".join(out)


def from_portable(tokens: tuple[int, ...], data: bytes, n_stream: int) -> ParkedState:
    """A saved state made ready for this context (as if captured from sequence 0); raises `StateMismatch`."""
    if not data:
        return ParkedState(tokens, b"")
    if data.startswith(_RAW) and len(data) >= 8:
        (saved_streams,) = _U32.unpack_from(data, 4)
        if saved_streams != n_stream:
            raise StateMismatch(
                f"this model's cache state only loads where the sequence count matches: it was saved with "
                f"{saved_streams} sequences, this parent has {n_stream} (n_parallel, plus one with embeddings)"
            )
        return ParkedState(tokens, data[8:])
    if not data.startswith(_PORTABLE) or len(data) < 12:
        raise StateMismatch("the KV state is not in a form this version of llama_isolate writes")
    (n_parts,) = _U32.unpack_from(data, 8)
    offset, out = 12, [data[4:8], struct.pack("<i", 0)]
    window = 0
    for _ in range(n_parts):
        if offset + 4 > len(data):
            raise StateMismatch("the KV state is truncated")
        (size,) = _U32.unpack_from(data, offset)
        single = data[offset + 4 : offset + 4 + size]
        if len(single) != size or size < 8:
            raise StateMismatch("the KV state is truncated")
        offset += 4 + size
        window = 4 + size - 4 + 4 * (n_stream - 1)  # this part as expanded below
        out += [_U32.pack(n_stream), single[4:], bytes(4 * (n_stream - 1))]
    if offset != len(data):
        raise StateMismatch("the KV state has trailing bytes")
    return ParkedState(tokens, b"".join(out), 0, window if n_parts > 1 else 0)


def flash_attention_of(data: bytes) -> str | None:
    """ "on" or "off" as a portable state's V cache layout tells (transposed = off); None if unknown."""
    if not data.startswith(_PORTABLE) or len(data) < 24:
        return None
    offset = 12 + 4 + 4  # header, part size, stream count (1)
    (cells,) = _U32.unpack_from(data, offset)
    offset += 4
    for _ in range(cells):  # each cell: position (i32), sequence count (u32), sequence ids (i32 each)
        if offset + 8 > len(data):
            return None
        (n_seq,) = _U32.unpack_from(data, offset + 4)
        offset += 8 + 4 * n_seq
    if offset + 4 > len(data):
        return None
    (v_trans,) = _U32.unpack_from(data, offset)
    return "off" if v_trans else "on"


def _one_stream(part: bytes, seq_id: int, n_stream: int) -> bytes | None:
    """A cache's state with only the sequence's stream, or None if the bytes are not laid out as expected."""
    before, after = 4 * seq_id, 4 * (n_stream - seq_id - 1)
    if len(part) < 4 + before + 4 + after or _U32.unpack_from(part, 0)[0] != n_stream:
        return None
    if any(part[4 : 4 + before]) or (after and any(part[-after:])):
        return None
    return _U32.pack(1) + part[4 + before : len(part) - after]
