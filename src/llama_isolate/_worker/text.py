"""Turning token bytes into text a person can read, one sequence at a time."""

from __future__ import annotations

import codecs


class StopFilter:
    """Holds back text that may be the start of a stop string, and cuts at one.

    `feed` returns the text safe to emit now and whether a stop string was
    found; `flush` returns what was held back when generation ends otherwise.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        self._pending += text
        cut = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            emit, self._pending = self._pending[:cut], ""
            return emit, True
        hold = self._longest_stop_prefix_suffix()
        split = len(self._pending) - hold
        emit, self._pending = self._pending[:split], self._pending[split:]
        return emit, False

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return rest

    def _longest_stop_prefix_suffix(self) -> int:
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest


class Detokenizer:
    """Token pieces (bytes) to text, never splitting a multi-byte UTF-8 character.

    A character whose bytes arrive in two tokens is emitted whole with the
    second; bytes that are not UTF-8 at all become U+FFFD rather than an error.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = StopFilter(stops)

    def feed(self, piece: bytes) -> tuple[str, bool]:
        """The text to emit after this piece, and whether a stop string ended it."""
        return self._stop.feed(self._decoder.decode(piece))

    def flush(self) -> str:
        """Whatever text is still held back (a partial stop string).

        The bytes of a character that the last token left unfinished (the
        answer was cut by max_tokens mid-character) are dropped: they are
        not a character, and U+FFFD in their place would look like one.
        """
        self._decoder.reset()
        return self._stop.flush()
