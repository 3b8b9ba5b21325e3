"""The chat page against the real server: real answers stream, Stop frees the server, the settings and the chosen
model reach the server's request body, images reach a vision model, and a phone shows one conversation whole."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from llama_isolate import ContextParams, LlamaLoad, default_model_path
from llama_isolate.server import ServedModel, create_app

from ..helpers.fuzz import TEMPLATE
from ..helpers.models import GREEDY
from ..helpers.pictures import RED
from ..helpers.serving import serving
from .conftest import ASKS_KEY, PHONE, SLOW, WRONG_KEY, answer, ask, browsing, loaded, settings, shot

FIRST = default_model_path().stem
SECOND = "second-model"
RED_SIZE = (48, 36)  # as tests/helpers/pictures.py draws it


class Recorder:
    """ASGI middleware keeping the JSON body of every chat request the server receives."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/v1/chat/completions"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.bodies.append(json.loads(b"".join(chunks) or b"{}"))
        replayed = False

        async def again() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()  # the disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, again, send)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Recorder]]:
    """The default model (2 slots) and a second model (1 slot, a small context) under another name."""
    first = LlamaLoad(path=default_model_path(), context_params=ContextParams(n_parallel=2, n_ctx=1024))
    second = LlamaLoad(path=default_model_path(), context_params=ContextParams(n_parallel=1, n_ctx=512))
    recorder = Recorder(create_app(models=[ServedModel(FIRST, first), ServedModel(SECOND, second)]))
    with serving(recorder) as url:
        yield url, recorder


@pytest.fixture
def page(browser: Browser, server: tuple[str, Recorder]) -> Iterator[Page]:
    """The chat page from the real server, loaded, with its models known."""
    with browsing(browser) as p:
        loaded(p, server[0] + "/")
        expect(p.get_by_test_id("model-0")).to_have_value(FIRST)
        yield p


def metric(base_url: str, name: str) -> float:
    """One unlabelled sample from the server's GET /metrics (Prometheus text)."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name} in /metrics:\n{text}"
    return float(match.group(1))


def wait_running(base_url: str, value: float, timeout: float = 10) -> None:
    """Waits until the server's gauge of prompts being decoded (both models) reads `value`."""
    deadline = time.monotonic() + timeout
    seen = metric(base_url, "llama_isolate_prompts_running")
    while seen != value:
        assert time.monotonic() < deadline, f"llama_isolate_prompts_running stayed {seen}, not {value}, for {timeout} s"
        time.sleep(0.05)  # a polling interval, not a synchronisation: the deadline decides
        seen = metric(base_url, "llama_isolate_prompts_running")


def test_stop_mid_answer_keeps_the_partial_text_and_frees_the_server(page: Page, server: tuple[str, Recorder]) -> None:
    base_url = server[0]
    generated = metric(base_url, "llama_isolate_tokens_generated_total")
    settings(page, 0, max_tokens="400")
    ask(page, 0, "Write a long story about a dragon who learns to sing.")

    text = answer(page, 0).locator(".text")
    expect(text).to_have_text(re.compile(r"(\w+\W+){3}"), timeout=SLOW)  # tokens arrive, streamed
    expect(answer(page, 0)).to_have_attribute("data-state", "streaming")  # ...before the answer is over
    wait_running(base_url, 1)
    page.get_by_test_id("stop-0").click()

    expect(page.get_by_test_id("pane-0")).to_have_attribute("data-state", "idle")
    expect(answer(page, 0)).to_have_attribute("data-state", "stopped")
    expect(answer(page, 0).locator(".meta")).to_contain_text("stopped")
    partial = text.text_content()
    assert partial is not None and partial.strip()
    wait_running(base_url, 0)  # the dropped connection cancelled the prompt on the server...
    assert text.text_content() == partial  # ...and nothing more was drawn into the page after Stop
    # ...before it could run on: the server generated the tokens shown and the few decoded while Stop travelled,
    # far from the 400 this story reaches when left to run (so a fast server that lets it run on fails here too).
    shown = re.match(r"(\d+) tokens", answer(page, 0).locator(".meta").text_content() or "")
    assert shown, "the stopped answer does not say how many tokens it got"
    total = metric(base_url, "llama_isolate_tokens_generated_total") - generated
    assert int(shown.group(1)) <= total < 200, f"the server generated {total} tokens, the page showed {shown.group(1)}"
    expect(page.get_by_test_id("send-0")).to_be_enabled()
    expect(page.get_by_test_id("stop-0")).to_be_disabled()


def test_both_panes_stream_at_once_and_show_their_speed(page: Page, server: tuple[str, Recorder]) -> None:
    base_url, recorder = server
    for pane in (0, 1):
        settings(page, pane, max_tokens="120")
    page.get_by_test_id("input-0").fill("Write a long story about a lighthouse keeper.")
    page.get_by_test_id("input-1").fill("Write a Python function that reverses a string, with an example.")
    page.get_by_test_id("send-0").click()
    page.get_by_test_id("send-1").click()

    # Both answers are streaming at the same moment: the two prompts are decoded side by side.
    page.wait_for_function(
        """() => [0, 1].every((i) => {
            const a = document.querySelector(`[data-testid="transcript-${i}"] .msg.assistant:last-child`);
            return a && a.dataset.state === "streaming" && a.querySelector(".text").textContent.length > 0;
        })""",
        timeout=SLOW,
    )
    for pane in (0, 1):
        expect(page.get_by_test_id(f"pane-{pane}")).to_have_attribute("data-state", "idle", timeout=SLOW * 2)
        expect(answer(page, pane)).to_have_attribute("data-state", "done")
        assert (answer(page, pane).locator(".text").text_content() or "").strip()
        expect(page.get_by_test_id(f"speed-{pane}")).to_have_text(re.compile(r"^\d+\.\d tok/s$"))
        expect(page.get_by_test_id(f"ttft-{pane}")).to_have_text(re.compile(r"^first token \d"))
        usage = page.get_by_test_id(f"usage-{pane}").text_content() or ""
        got = re.search(r"answer (\d+)$", usage)
        assert got, f"no usage shown in pane {pane}: {usage!r}"
        assert 1 <= int(got.group(1)) <= 120
    wait_running(base_url, 0)
    for pane in (0, 1):
        page.get_by_test_id(f"settings-toggle-{pane}").click()  # closed, for the picture
    shot(page, "chat-desktop")

    # The next turn sends the whole conversation: the API keeps no state.
    sent = len(recorder.bodies)
    settings(page, 0, max_tokens="8")
    ask(page, 0, "Give it a title.")
    expect(page.get_by_test_id("pane-0")).to_have_attribute("data-state", "idle", timeout=SLOW)
    expect(answer(page, 0)).to_have_attribute("data-state", "done")
    body = recorder.bodies[sent]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == answer(page, 0).page.evaluate(
        "JSON.parse(localStorage.getItem('llama-isolate.conversations')).conversations"
        ".find((c) => c.messages[0].content.includes('lighthouse')).messages[1].content"
    )
    assert body["max_tokens"] == 8
    assert body["stream"] is True
    expect(page.get_by_test_id("transcript-1").locator(".msg")).to_have_count(2)  # the other pane is its own


def test_settings_reach_the_body_the_server_receives(page: Page, server: tuple[str, Recorder]) -> None:
    recorder = server[1]
    sent = len(recorder.bodies)
    settings(page, 1, system="You answer in one short sentence.", temperature="0.3", top_p="0.8", max_tokens="6")
    ask(page, 1, "What is the sky?")
    expect(answer(page, 1)).to_have_attribute("data-state", "done", timeout=SLOW)
    body = recorder.bodies[sent]
    assert body["messages"] == [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What is the sky?"},
    ]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["model"]) == (0.3, 0.8, 6, FIRST)
    expect(page.get_by_test_id("usage-1")).to_have_text(re.compile(r", answer [1-6]$"))  # the server kept to 6

    # A value out of range is refused in the page, in words, and nothing is sent.
    settings(page, 1, temperature="7")
    ask(page, 1, "And the sea?")
    expect(page.get_by_test_id("error-1")).to_have_text(re.compile(r"^Temperature must be a number from 0 up to 2"))
    assert len(recorder.bodies) == sent + 1
    expect(page.get_by_test_id("input-1")).to_have_value("And the sea?")

    # Empty means the server's default: the field is left out of the request.
    settings(page, 1, temperature="", top_p="", system="")
    ask(page, 1, "And the sea?")
    expect(answer(page, 1)).to_have_attribute("data-state", "done", timeout=SLOW)
    body = recorder.bodies[sent + 1]
    assert "temperature" not in body and "top_p" not in body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


def test_the_model_picker_sends_the_chosen_model_and_keeps_it(page: Page, server: tuple[str, Recorder]) -> None:
    recorder = server[1]
    picker = page.get_by_test_id("model-1")
    expect(picker.locator("option")).to_have_text([FIRST, SECOND])
    picker.select_option(SECOND)
    settings(page, 1, max_tokens="4")
    sent = len(recorder.bodies)
    ask(page, 1, "Hello there")
    expect(answer(page, 1)).to_have_attribute("data-state", "done", timeout=SLOW)
    assert recorder.bodies[sent]["model"] == SECOND
    expect(page.get_by_test_id("model-0")).to_have_value(FIRST)  # the other conversation keeps its own

    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.get_by_test_id("model-1")).to_have_value(SECOND)
    ask(page, 1, "Again")
    expect(answer(page, 1)).to_have_attribute("data-state", "done", timeout=SLOW)
    assert recorder.bodies[sent + 1]["model"] == SECOND
    expect(page.get_by_test_id("attach-1")).to_be_hidden()  # neither model reads images


def test_a_phone_shows_one_conversation_whole(browser: Browser, server: tuple[str, Recorder]) -> None:
    with browsing(browser, PHONE, has_touch=True, is_mobile=True) as page:
        loaded(page, server[0] + "/")
        expect(page.get_by_test_id("pane-0")).to_be_visible()
        expect(page.get_by_test_id("pane-1")).to_be_hidden()
        expect(page.get_by_test_id("sidebar")).to_be_hidden()
        settings(page, 0, max_tokens="200")
        page.get_by_test_id("settings-toggle-0").click()  # closed again: the transcript gets the room
        ask(page, 0, "Tell me about the moon in a few sentences.")
        expect(answer(page, 0)).to_have_attribute("data-state", "done", timeout=SLOW)

        height = PHONE["height"]
        question = page.get_by_test_id("transcript-0").locator(".msg.user").last.bounding_box()
        start = answer(page, 0).locator(".text > :first-child").bounding_box()
        compose = page.get_by_test_id("compose-0").bounding_box()
        transcript = page.get_by_test_id("transcript-0").bounding_box()
        assert question and start and compose and transcript
        # The question and the first line of its answer are on screen together, without scrolling anything...
        assert question["y"] >= 0 and question["y"] + question["height"] <= start["y"]
        assert start["y"] + min(start["height"], 20) <= compose["y"]
        # ...in a transcript that has the screen's height, above the box to write in, docked at the bottom.
        assert transcript["height"] >= height * 0.6, transcript
        assert height - 60 <= compose["y"] + compose["height"] <= height, compose
        assert page.evaluate("document.scrollingElement.scrollHeight") <= height  # the page itself does not scroll
        shot(page, "chat-phone")

        # The list of conversations is one tap away, and opening one closes it.
        page.get_by_test_id("menu").click()
        expect(page.get_by_test_id("sidebar")).to_be_visible()
        expect(page.get_by_test_id("conversation")).to_have_count(1)
        page.get_by_test_id("conversation").locator(".open").click()
        expect(page.get_by_test_id("sidebar")).to_be_hidden()


def test_the_key_and_an_error_from_the_real_server(browser: Browser) -> None:
    load = LlamaLoad(path=default_model_path(), context_params=ContextParams(n_parallel=1, n_ctx=512))
    with serving(create_app(load, api_key="sekrit")) as url, browsing(browser) as page:
        loaded(page, url + "/")  # the page itself needs no key...
        expect(page.get_by_test_id("status")).to_have_text(ASKS_KEY)
        expect(page.get_by_test_id("key-form")).to_be_visible()
        page.get_by_test_id("api-key").fill("wrong")
        page.get_by_test_id("save-key").click()
        expect(page.get_by_test_id("status")).to_have_text(WRONG_KEY)
        page.get_by_test_id("api-key").fill("sekrit")
        page.get_by_test_id("save-key").click()
        expect(page.get_by_test_id("model-0")).to_have_value(default_model_path().stem)
        expect(page.get_by_test_id("status")).to_have_text("")

        settings(page, 0, max_tokens="8")
        too_long = "word " * 600
        ask(page, 0, too_long)
        error = page.get_by_test_id("error-0")
        expect(error.locator(".error-text")).to_have_text(
            "This conversation is too long for the model (it reads at most 512 tokens at once). Start a new "
            "conversation, edit an earlier question, or lower the answer's max tokens."
        )
        expect(error.locator("details")).to_contain_text("HTTP 400")  # the server's own words, on request
        expect(page.get_by_test_id("input-0")).to_have_value(too_long.strip())

        page.get_by_test_id("input-0").fill("Hi")
        with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
            page.get_by_test_id("send-0").click()
        assert sent.value.headers["authorization"] == "Bearer sekrit"
        assert [m["content"] for m in json.loads(sent.value.post_data or "{}")["messages"]] == ["Hi"]
        expect(answer(page, 0)).to_have_attribute("data-state", "done", timeout=SLOW)
        expect(page.get_by_test_id("error-0")).to_be_hidden()


def test_an_image_goes_to_the_vision_model_and_stays_after_a_reload(
    browser: Browser, tiny_vlm: tuple[Path, Path], tmp_path: Path
) -> None:
    model, mmproj = tiny_vlm
    load = LlamaLoad(
        path=model,
        mmproj_path=mmproj,
        chat_template=TEMPLATE,
        sampler_params=GREEDY,
        context_params=ContextParams(n_ctx=512, n_predict=8),
    )
    recorder = Recorder(create_app(load))
    picture = tmp_path / "red.png"
    picture.write_bytes(RED.data)
    with serving(recorder) as url, browsing(browser) as page:
        loaded(page, url + "/")
        expect(page.get_by_test_id("attach-0")).to_be_visible()  # this model reads images
        settings(page, 0, max_tokens="8")
        page.get_by_test_id("file-0").set_input_files(str(picture))
        expect(page.get_by_test_id("attachments-0").locator("img")).to_have_count(1)
        ask(page, 0, "What colour is this?")
        expect(answer(page, 0)).to_have_attribute("data-state", "done", timeout=SLOW)
        expect(page.get_by_test_id("error-0")).to_be_hidden()
        expect(page.get_by_test_id("attachments-0").locator("img")).to_have_count(0)  # sent, so no longer pending

        content = recorder.bodies[0]["messages"][0]["content"]
        uri = "data:image/png;base64," + base64.b64encode(RED.data).decode()
        assert content == [
            {"type": "text", "text": "What colour is this?"},
            {"type": "image_url", "image_url": {"url": uri}},
        ]
        with_image = prompt_tokens(page, 0)
        ask(page, 0, "What colour is this?")
        expect(answer(page, 0)).to_have_attribute("data-state", "done", timeout=SLOW)
        assert recorder.bodies[1]["messages"][0]["content"] == content  # the image stays in the conversation

        page.reload()
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        image = page.get_by_test_id("transcript-0").locator(".msg.user img").first
        expect(image).to_have_attribute("src", uri)
        assert page.evaluate("(img) => img.naturalWidth", image.element_handle()) == RED_SIZE[0]

        page.get_by_test_id("new-chat").click()  # the same question without the image reads fewer tokens
        ask(page, 0, "What colour is this?")
        expect(answer(page, 0)).to_have_attribute("data-state", "done", timeout=SLOW)
        assert prompt_tokens(page, 0) < with_image, "the server did not read the image"


def prompt_tokens(page: Page, pane: int) -> int:
    usage = page.get_by_test_id(f"usage-{pane}").text_content() or ""
    found = re.search(r"prompt (\d+) tokens", usage)
    assert found, f"no usage shown: {usage!r}"
    return int(found[1])
