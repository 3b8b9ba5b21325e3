"""Waiting for what the library logs: an asyncio event set by a log record."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator


class Flag(logging.Handler):
    """Sets an asyncio event when a log record's message contains `text` (records come on the loop's thread)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@contextlib.contextmanager
def flag_on_log(text: str) -> Iterator[asyncio.Event]:
    """An event set once the ``llama_isolate`` logger logs a message containing `text`."""
    handler = Flag(text)
    logger = logging.getLogger("llama_isolate")
    logger.addHandler(handler)
    try:
        yield handler.event
    finally:
        logger.removeHandler(handler)
