"""The `llama-isolate` command: `main` (run, chat, serve, bench), `serve`'s options, and the two-pane TUI."""

from __future__ import annotations

from .commands import main

__all__ = ["main"]
