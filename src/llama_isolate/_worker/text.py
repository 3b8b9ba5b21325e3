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
        split = len(self._pending) - held_back(self._pending, self._stops)
        emit, self._pending = self._pending[:split], self._pending[split:]
        return emit, False

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return rest


def held_back(text: str, strings: tuple[str, ...]) -> int:
    """How many of `text`'s last characters may be the start of one of `strings` (and must wait for more)."""
    longest = 0
    for string in strings:
        for size in range(min(len(string) - 1, len(text)), longest, -1):
            if text.endswith(string[:size]):
                longest = size
                break
    return longest


class CallSplitter:
    """Splits a reply at its first tool-call marker: the text before it is the reply's, the rest the call's."""

    def __init__(self, markers: tuple[str, ...]) -> None:
        self._markers = markers
        self._pending = ""
        self.call: str | None = None  # the text from the marker on, once it was written

    def feed(self, text: str) -> str:
        """The reply's text that is safe to emit now (a possible start of the marker is held back)."""
        if self.call is not None:
            self.call += text
            return ""
        self._pending += text
        at = min((i for i in (self._pending.find(m) for m in self._markers) if i >= 0), default=-1)
        if at >= 0:
            emit, self.call, self._pending = self._pending[:at], self._pending[at:], ""
            return emit
        split = len(self._pending) - held_back(self._pending, self._markers)
        emit, self._pending = self._pending[:split], self._pending[split:]
        return emit

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return rest

    def abandon(self) -> str:
        """The call text back as the reply's own (the call could not be held to its grammar); watch on."""
        text, self.call = self.call or "", None
        return text


class Detokenizer:
    """Token pieces (bytes) to text, never splitting a multi-byte UTF-8 character.

    A character whose bytes arrive in two tokens is emitted whole with the
    second; bytes that are not UTF-8 at all become U+FFFD rather than an error.
    With tool-call `markers`, the text from the first one on is kept apart
    (`call_text`) and never emitted; stop strings apply to the text before it.
    """

    def __init__(self, stops: tuple[str, ...], markers: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = StopFilter(stops)
        self._calls = CallSplitter(markers) if markers else None

    @property
    def call_text(self) -> str | None:
        """The reply from its tool-call marker on, once the marker was written."""
        return None if self._calls is None else self._calls.call

    def abandon_call(self) -> tuple[str, bool]:
        """Give the tool-call text back to the reply: the text to emit now, and whether a stop string ended it."""
        if self._calls is None:
            return "", False
        return self._stop.feed(self._calls.abandon())

    def feed(self, piece: bytes) -> tuple[str, bool]:
        """The text to emit after this piece, and whether a stop string ended it."""
        text = self._decoder.decode(piece)
        if self._calls is not None:
            text = self._calls.feed(text)
        return self._stop.feed(text)

    def flush(self) -> str:
        """Whatever text is still held back (a partial stop string).

        The bytes of a character that the last token left unfinished (the
        answer was cut by max_tokens mid-character) are dropped: they are
        not a character, and U+FFFD in their place would look like one.
        """
        self._decoder.reset()
        held = self._calls.flush() if self._calls is not None else ""
        return self._stop.feed(held)[0] + self._stop.flush() if held else self._stop.flush()
