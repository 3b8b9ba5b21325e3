"""`llama-isolate tui`: two conversations side by side, streaming at the same time.

Each pane is a `LlamaScope` on one `LlamaParent` (n_parallel=2, so both decode
together), with its own input and Stop button; its transcript wraps long
lines. The status line shows the worker's status, the queue and the tokens
per second. The app runs on Textual's asyncio loop and calls the library
directly: the model works in the worker process, so typing and scrolling
never wait for it. If the worker dies, the status line says why and ctrl+r
starts a new one; both conversations carry on.
"""

from __future__ import annotations

import collections
import time
from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, Static, TextArea

from .._errors import LlamaError
from .._events import CompletionEvent, LlamaStatus
from .._params import LlamaLoad
from .._parent import LlamaParent
from .._scope import LlamaScope

_RATE_WINDOW_S = 2.0


class ConversationPane(Vertical):
    """One conversation: its transcript, an input line and a Stop button."""

    DEFAULT_CSS = """
    ConversationPane { width: 1fr; border: round $primary; }
    ConversationPane TextArea { height: 1fr; }
    ConversationPane Horizontal { height: auto; }
    ConversationPane Input { width: 1fr; }
    ConversationPane Button { min-width: 8; width: 8; }
    """

    def __init__(self, title: str, name: str) -> None:
        super().__init__(id=name)
        self.border_title = title
        self.scope: LlamaScope | None = None
        self.max_tokens: int | None = None
        self.events: list[CompletionEvent] = []

    def compose(self) -> ComposeResult:
        yield TextArea(id=f"{self.id}-log", read_only=True, soft_wrap=True, show_line_numbers=False)
        with Horizontal():
            yield Input(placeholder="Ask something…", id=f"{self.id}-input")
            yield Button("Stop", id=f"{self.id}-stop", variant="error")

    @property
    def transcript(self) -> TextArea:
        """The conversation as shown (long lines wrap at the pane's edge)."""
        return self.query_one(TextArea)

    def write(self, text: str) -> None:
        """Append text to the transcript and keep its end in view."""
        transcript = self.transcript
        transcript.insert(text, transcript.document.end)
        transcript.scroll_end(animate=False)

    def attach(self, scope: LlamaScope, max_tokens: int | None) -> None:
        self.scope, self.max_tokens = scope, max_tokens
        scope.stream.listen(self.write)
        scope.completions.listen(self._finished)

    def _finished(self, event: CompletionEvent) -> None:
        self.events.append(event)
        note = "" if event.finish_reason in ("stop", "length") else f" [{event.finish_reason}]"
        if not event.success:
            note = f" [error: {event.error}]"
        self.write(f"{note}\n\n")

    async def on_input_submitted(self, message: Input.Submitted) -> None:
        text = message.value.strip()
        message.input.value = ""
        if not text or self.scope is None:
            return
        self.write(f"> {text}\n")
        try:
            await self.scope.send_prompt(text, max_tokens=self.max_tokens)
        except LlamaError as exc:  # the worker died, or the parent refused the prompt
            self.write(f"[not sent: {exc}]\n\n")

    async def on_button_pressed(self, message: Button.Pressed) -> None:
        if self.scope is not None:
            await self.scope.stop()


class ChatApp(App[None]):
    """Two side-by-side conversations on one worker.

    Example::

        ChatApp(LlamaLoad(path=default_model_path(), context_params=ContextParams(n_parallel=2))).run()
    """

    TITLE = "llama-isolate"
    CSS = """
    #status { dock: bottom; height: 1; background: $panel; padding: 0 1; }
    #panes { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [("ctrl+q", "quit", "Quit"), ("ctrl+r", "restart", "Restart the worker")]

    def __init__(self, load: LlamaLoad, *, max_tokens: int | None = None) -> None:
        super().__init__()
        self.llama = LlamaParent(load)
        self._max_tokens = max_tokens
        self._token_times: collections.deque[float] = collections.deque()
        self._load_fraction = 0.0
        self._failure: str | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="panes"):
            yield ConversationPane("left", "left")
            yield ConversationPane("right", "right")
        yield Label("starting…", id="status")

    async def on_mount(self) -> None:
        self.set_interval(0.25, self._refresh_status)
        self.llama.stream.listen(lambda _: self._token_times.append(time.monotonic()))
        try:
            await self.llama.init(on_progress=self._on_progress)
        except Exception as exc:
            self._failure = f"could not load the model: {exc}"
            self._refresh_status()
            return
        for pane in self.query(ConversationPane):
            pane.attach(self.llama.get_scope(), self._max_tokens)
        self.query_one("#left-input", Input).focus()
        self._refresh_status()

    async def action_restart(self) -> None:
        """Start a new worker after the old one died (ctrl+r); the conversations carry on."""
        if self.llama.status is not LlamaStatus.ERROR or self._failure is not None:
            return
        try:
            await self.llama.restart()
        except LlamaError as exc:
            self.notify(f"the worker did not start: {exc}", severity="error")
        self._refresh_status()

    def _on_progress(self, fraction: float) -> None:
        self._load_fraction = fraction
        self._refresh_status()

    def _refresh_status(self) -> None:
        now = time.monotonic()
        while self._token_times and now - self._token_times[0] > _RATE_WINDOW_S:
            self._token_times.popleft()
        status = self.llama.status
        if self._failure is not None:
            text = self._failure
        elif status is LlamaStatus.LOADING:
            text = f"loading the model… {self._load_fraction:.0%}"
        elif status is LlamaStatus.ERROR:
            text = f"{self.llama.error} | ctrl+r restarts the worker"
        else:
            rate = len(self._token_times) / _RATE_WINDOW_S
            pid = self.llama.worker_pid
            text = f"worker {status.value} (pid {pid}) | queued {self.llama.queue_length} | {rate:.0f} tok/s"
        self.query_one("#status", Static).update(text + " | ctrl+q quits")

    async def on_unmount(self) -> None:
        await self.llama.dispose()
