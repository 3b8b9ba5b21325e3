"""The two-pane chat app, driven headless with Textual's pilot at 80x24."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual.pilot import Pilot
from textual.widgets import Button, Input

from llama_isolate import ContextParams, LlamaLoad, LlamaStatus, SamplerParams
from llama_isolate._cli.tui import ChatApp, ConversationPane


def answer(pane: ConversationPane) -> str:
    """What the model wrote in the pane so far (the lines after the prompt)."""
    return "".join(pane.transcript.text.splitlines(keepends=True)[1:])


def chat_load(model_path: Path) -> LlamaLoad:
    return LlamaLoad(
        path=model_path,
        context_params=ContextParams(n_ctx=1024, n_parallel=2),
        sampler_params=SamplerParams(greedy=True),
    )


async def ready(app: ChatApp, pilot: Pilot[None]) -> None:
    while app.llama.status is not LlamaStatus.READY:
        await pilot.pause(0.05)


async def submit(pilot: Pilot[None], pane: str, text: str) -> None:
    """Type `text` into the pane's input and press Enter (the pilot waits until the app has handled it)."""
    await pilot.click(f"#{pane}-input")
    await pilot.press(*text, "enter")


async def test_two_panes_stream_at_once_and_stop_alone(model_path: Path) -> None:
    app = ChatApp(chat_load(model_path), max_tokens=200)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        left, right = app.query_one("#left", ConversationPane), app.query_one("#right", ConversationPane)
        await pilot.click("#left-input")
        await pilot.press(*"Write a long story about a fox.")
        await pilot.click("#right-input")
        await pilot.press(*"Write a long story about a bear.")
        # Enter in both, back to back. (Once tokens stream, the pilot's own
        # clicks and key presses wait for the app to go idle, i.e. for the
        # answers to end; the widgets' actions are what Enter and a click do.)
        await app.query_one("#left-input", Input).action_submit()
        await app.query_one("#right-input", Input).action_submit()
        # Both stream at the same time: each transcript grows past its prompt line.
        while not (answer(left) and answer(right)):
            await pilot.pause(0.02)
        assert app.llama.is_generating
        app.query_one("#left-stop", Button).press()
        while not left.events:
            await pilot.pause(0.05)
        assert left.events[0].finish_reason == "cancelled"
        assert not right.events  # the right pane goes on
        right_so_far = answer(right)
        while not right.events:
            await pilot.pause(0.05)
        assert right.events[0].success
        assert answer(right).startswith(right_so_far.rstrip("\n"))
        assert len(answer(right)) > len(right_so_far)  # it went on after the left one stopped
        status = str(app.query_one("#status").render())
        assert "worker" in status and "queued 0" in status and "tok/s" in status
    assert app.llama.status is LlamaStatus.DISPOSED


async def test_the_app_renders_at_80x24_while_loading_a_missing_model(tmp_path: Path) -> None:
    app = ChatApp(LlamaLoad(path=tmp_path / "missing.gguf"))
    async with app.run_test(size=(80, 24)) as pilot:
        while app.llama.status is not LlamaStatus.ERROR:
            await pilot.pause(0.05)
        await pilot.pause(0.05)
        assert "could not load the model" in str(app.query_one("#status").render())
        assert app.screen.size == (80, 24)


async def test_long_lines_wrap_at_the_pane_edge(model_path: Path) -> None:
    app = ChatApp(chat_load(model_path), max_tokens=2)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        left = app.query_one("#left", ConversationPane)
        left.write("word " * 40 + "END\n")  # one line of 203 characters in a pane under 40 wide
        await pilot.pause()
        transcript = left.transcript
        assert transcript.text.count("\n") == 1
        assert transcript.wrapped_document.height >= 5  # shown on several rows, not clipped
        assert transcript.virtual_size.width <= transcript.size.width + 1


async def test_after_the_worker_dies_typing_says_so_and_ctrl_r_restarts_it(model_path: Path) -> None:
    app = ChatApp(chat_load(model_path), max_tokens=4)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(app, pilot)
        assert app.llama.worker_pid is not None
        os.kill(app.llama.worker_pid, signal.SIGKILL)
        while app.llama.status is not LlamaStatus.ERROR:
            await pilot.pause(0.05)
        await submit(pilot, "left", "Hello?")
        left = app.query_one("#left", ConversationPane)
        assert "[not sent:" in left.transcript.text
        while "ctrl+r restarts" not in str(app.query_one("#status").render()):
            await pilot.pause(0.05)  # the status line refreshes every 0.25 s
        await pilot.press("ctrl+r")
        await ready(app, pilot)
        await submit(pilot, "left", "Hello again")
        while not left.events:
            await pilot.pause(0.05)
        assert left.events[-1].success
    assert app.return_code in (0, None)
