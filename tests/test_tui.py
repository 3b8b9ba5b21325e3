"""The two-pane chat app, driven headless with Textual's pilot at 80x24."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("textual")

from textual.widgets import Button, Input, Log

from llama_isolate import ContextParams, LlamaLoad, LlamaStatus, SamplerParams
from llama_isolate._tui import ChatApp, ConversationPane


def answer(pane: ConversationPane) -> str:
    """What the model wrote in the pane so far (the lines after the prompt)."""
    return "".join(pane.query_one(Log).lines[1:])


async def test_two_panes_stream_at_once_and_stop_alone(model_path: Path) -> None:
    load = LlamaLoad(
        path=model_path,
        context_params=ContextParams(n_ctx=1024, n_parallel=2),
        sampler_params=SamplerParams(greedy=True),
    )
    app = ChatApp(load, max_tokens=200)
    async with app.run_test(size=(80, 24)) as pilot:
        while app.llama.status is not LlamaStatus.READY:
            await pilot.pause(0.05)
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
