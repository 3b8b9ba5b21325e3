"""The worker's end of the channel: framed messages over the socket the parent passed down.

Replies produced during one loop turn are sent in one write from the main
thread; what the socket cannot take at once goes to a writer thread, so a
parent that reads slowly never stalls decoding. The reader thread may queue
a reply of its own (a `Pong`) behind them.
"""

from __future__ import annotations

import socket
import threading

from .. import _protocol as protocol


class Channel:
    """Framed messages over the socket the parent passed down.

    Replies produced during one loop turn are sent together by `flush()`,
    straight from the main thread when the socket takes them at once (the
    common case: no thread hand-off per token). Whatever the socket cannot
    take now goes to the writer thread, which blocks on it instead, so a
    parent that reads slowly never stalls decoding.
    """

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._pending: list[bytes] = []
        self._backlog: list[bytes] = []
        self._writing = False
        self._closing = False
        self._gone = False
        self._wake = threading.Condition()

    def receive(self) -> protocol.Command | None:
        """The next command, or None when the parent closed the channel."""
        header = self._read_exactly(protocol.HEADER.size)
        if header is None:
            return None
        payload = self._read_exactly(protocol.frame_length(header))
        return None if payload is None else protocol.decode(payload)  # type: ignore[return-value]

    def _read_exactly(self, size: int) -> bytes | None:
        chunks, remaining = [], size
        while remaining:
            chunk = self._sock.recv(min(remaining, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def send(self, message: protocol.Reply) -> None:
        """Queue a reply until the next `flush()`; never blocks."""
        self._pending.append(protocol.encode(message))

    def send_now(self, message: protocol.Reply) -> None:
        """Send from the calling thread (before the writer thread runs)."""
        self._sock.sendall(protocol.encode(message))

    def send_from_reader(self, message: protocol.Reply) -> None:
        """Queue a reply from the reader thread; the writer thread sends it, after what is already queued."""
        frame = protocol.encode(message)
        with self._wake:
            if not self._gone:
                self._backlog.append(frame)
                self._wake.notify()

    def flush(self) -> None:
        """Send the queued replies without blocking; the writer thread takes what does not fit."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        with self._wake:
            if self._gone:
                return
            if not self._backlog and not self._writing:
                try:
                    data = data[self._sock.send(data, socket.MSG_DONTWAIT) :]
                except BlockingIOError:
                    pass
                except OSError:
                    self._gone = True  # the parent is gone; the reader sees it too
                    return
            if data:
                self._backlog.append(data)
                self._wake.notify()

    def start_writer(self) -> threading.Thread:
        thread = threading.Thread(target=self._write_loop, name="writer", daemon=True)
        thread.start()
        return thread

    def finish(self, writer: threading.Thread) -> None:
        """Send every queued reply, then close."""
        self.flush()
        with self._wake:
            self._closing = True
            self._wake.notify()
        writer.join(timeout=5)
        self._sock.close()

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                self._writing = False
                while not self._backlog and not self._closing:
                    self._wake.wait()
                if not self._backlog:
                    return
                data = b"".join(self._backlog)
                self._backlog.clear()
                self._writing = True
            try:
                self._sock.sendall(data)
            except OSError:
                with self._wake:
                    self._gone = True
                return
