"""The chat page in a real browser: Debian's headless chromium, driven by Playwright's sync API.

The tests are plain functions: Playwright's sync API refuses to run inside an event loop, and the server runs
in a thread of its own (tests/helpers/serving.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, Route, expect, sync_playwright

from llama_isolate import ContextParams, LlamaLoad, default_model_path

from ..helpers.paths import ROOT
from ..helpers.serving import serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SLOW = 90_000  # ms: a first token on a busy 2-core machine, with both panes decoding


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    from llama_isolate.server import create_app

    load = LlamaLoad(path=default_model_path(), context_params=ContextParams(n_parallel=2, n_ctx=1024))
    with serving(create_app(load)) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_url() -> Iterator[str]:
    """A second server, which wants an API key, with a small context."""
    from llama_isolate.server import create_app

    load = LlamaLoad(path=default_model_path(), context_params=ContextParams(n_parallel=1, n_ctx=512))
    with serving(create_app(load, api_key="sekrit")) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        why = f"{CHROMIUM} is missing: these tests drive Debian's chromium (sudo apt-get install chromium; make test"
        why += " installs it when run as root)"
        if os.environ.get("LLAMA_ISOLATE_REQUIRE_BROWSER"):
            pytest.fail(why)  # CI: they must run
        pytest.skip(why)
    with sync_playwright() as playwright:
        b = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def browsing(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context (its own localStorage); an uncaught script error in it fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    """The chat page from the real server, loaded, with its model known."""
    with browsing(browser) as p:
        p.goto(base_url + "/")
        expect(p.get_by_test_id("model")).to_have_text(default_model_path().stem)
        yield p


def metric(base_url: str, name: str) -> float:
    """One unlabelled sample from the server's GET /metrics (Prometheus text)."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name} in /metrics:\n{text}"
    return float(match.group(1))


def running(base_url: str) -> float:
    """The server's gauge of prompts being decoded."""
    return metric(base_url, "llama_isolate_prompts_running")


def wait_running(base_url: str, value: float, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    seen = running(base_url)
    while seen != value:
        assert time.monotonic() < deadline, f"llama_isolate_prompts_running stayed {seen}, not {value}, for {timeout} s"
        time.sleep(0.05)  # a polling interval, not a synchronisation: the deadline decides
        seen = running(base_url)


def answer(page: Page, pane: int) -> Locator:
    """The pane's latest answer bubble."""
    return page.get_by_test_id(f"transcript-{pane}").locator(".msg.assistant").last


def ask(page: Page, pane: int, question: str) -> None:
    page.get_by_test_id(f"input-{pane}").fill(question)
    page.get_by_test_id(f"send-{pane}").click()


def test_stop_mid_answer_keeps_the_partial_text_and_frees_the_server(page: Page, base_url: str) -> None:
    generated = metric(base_url, "llama_isolate_tokens_generated_total")
    page.get_by_test_id("max-tokens").fill("400")
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


def test_both_panes_stream_at_once_and_show_their_speed(page: Page, base_url: str) -> None:
    page.get_by_test_id("max-tokens").fill("120")
    page.get_by_test_id("input-0").fill("Write a long story about a lighthouse keeper.")
    page.get_by_test_id("input-1").fill("Write a long story about a fox in the snow.")
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

    # The next turn sends the whole conversation: the API keeps no state.
    first_answer = answer(page, 0).locator(".text").text_content()
    page.get_by_test_id("max-tokens").fill("8")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
        ask(page, 0, "Give it a title.")
    body = json.loads(sent.value.post_data or "{}")
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == first_answer
    assert body["max_tokens"] == 8
    assert body["stream"] is True
    expect(page.get_by_test_id("pane-0")).to_have_attribute("data-state", "idle", timeout=SLOW)
    expect(answer(page, 0)).to_have_attribute("data-state", "done")
    expect(page.get_by_test_id("transcript-1").locator(".msg")).to_have_count(2)  # the other pane is its own


def test_the_key_and_an_error_from_the_real_server(browser: Browser, keyed_url: str) -> None:
    with browsing(browser) as page:
        page.goto(keyed_url + "/")  # the page itself needs no key...
        expect(page.get_by_test_id("status")).to_contain_text("HTTP 401")  # ...the API does, and the page asks for it
        expect(page.get_by_test_id("key-form")).to_be_visible()
        page.get_by_test_id("api-key").fill("wrong")
        page.get_by_test_id("save-key").click()
        expect(page.get_by_test_id("status")).to_contain_text("wrong API key")
        page.get_by_test_id("api-key").fill("sekrit")
        page.get_by_test_id("save-key").click()
        expect(page.get_by_test_id("model")).to_have_text(default_model_path().stem)
        expect(page.get_by_test_id("status")).to_have_text("")

        page.get_by_test_id("max-tokens").fill("8")
        too_long = "word " * 600
        ask(page, 0, too_long)
        expect(page.get_by_test_id("error-0")).to_have_text(
            re.compile(r"^HTTP 400: .*\b512\b")
        )  # the context is too small
        expect(page.get_by_test_id("input-0")).to_have_value(too_long.strip())

        page.get_by_test_id("input-0").fill("Hi")
        with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
            page.get_by_test_id("send-0").click()
        assert sent.value.headers["authorization"] == "Bearer sekrit"
        assert [m["content"] for m in json.loads(sent.value.post_data or "{}")["messages"]] == ["Hi"]
        expect(answer(page, 0)).to_have_attribute("data-state", "done", timeout=SLOW)
        expect(page.get_by_test_id("error-0")).to_be_hidden()


# --- The page against a scripted API -----------------------------------------------------------------------------
# Playwright answers every request of a made-up origin, so that the page can meet what the real server seldom
# says (markup in the model's text, errors, a key) and can be served under a prefix. No model is loaded.

STATIC = ROOT / "src" / "llama_isolate" / "server" / "static"
ORIGIN = "http://chat.test"
PREFIX = "/mounted/here/"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def sse(*events: object, end: str = "\r\n") -> str:
    """A streaming body: each event a `data:` line and a blank line (CRLF by default, as sse-starlette sends)."""
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}{end}{end}" for e in events]
    return f": a comment line, which readers skip{end}" + "".join(lines)


def chunk(content: str | None = None, finish: str | None = None, **delta: str) -> dict[str, object]:
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def error(status: int, message: str) -> dict[str, object]:
    return {
        "status": status,
        "body": {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}},
    }


class ScriptedApi:
    """Answers the page's requests: its static files under PREFIX, GET v1/models, and chat answers from a list."""

    def __init__(self, page: Page, *answers: dict[str, object], key: str | None = None) -> None:
        self.answers = list(answers)
        self.key = key
        self.requests: list[dict[str, object]] = []
        self.unexpected: list[str] = []
        page.route(f"{ORIGIN}/**", self.handle)

    def handle(self, route: Route) -> None:
        request = route.request
        path = request.url.removeprefix(ORIGIN)
        if not path.startswith(PREFIX):
            self.unexpected.append(request.url)
            route.fulfill(status=404, body="not under the prefix")
            return
        rest = path.removeprefix(PREFIX)
        if rest in ("", "static/chat.js", "static/chat.css"):
            file = STATIC / (rest.removeprefix("static/") or "index.html")
            route.fulfill(body=file.read_text(), content_type=TYPES[file.suffix])
            return
        if self.key is not None and request.headers.get("authorization") != f"Bearer {self.key}":
            reply = error(401, "Invalid API key")
            route.fulfill(status=401, json=reply["body"])
            return
        if rest == "v1/models" and request.method == "GET":
            route.fulfill(json={"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "test"}]})
            return
        if rest == "v1/chat/completions" and request.method == "POST":
            self.requests.append(json.loads(request.post_data or "{}"))
            reply = self.answers.pop(0)
            if "stream" in reply:
                route.fulfill(body=str(reply["stream"]), content_type="text/event-stream")
            else:
                route.fulfill(status=int(reply["status"]), json=reply["body"])  # type: ignore[call-overload]
            return
        self.unexpected.append(request.url)
        route.fulfill(status=404, json={"error": {"message": "no such route"}})


@pytest.fixture
def blank(browser: Browser) -> Iterator[Page]:
    with browsing(browser) as p:
        yield p


def test_model_text_is_shown_as_text_and_usage_is_read(blank: Page) -> None:
    markup = '<img src="x" onerror="window.pwned = 1">'
    api = ScriptedApi(
        blank,
        {
            "stream": sse(
                chunk(role="assistant"),
                chunk(markup),
                chunk(" & <b>bold</b>"),
                chunk("\nsecond line", finish="stop"),
                {
                    **chunk(),
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 9,
                        "completion_tokens": 3,
                        "total_tokens": 12,
                        "prompt_tokens_details": {"cached_tokens": 4},
                    },
                },
                "[DONE]",
            )
        },
    )
    blank.goto(ORIGIN + PREFIX)
    expect(blank.get_by_test_id("model")).to_have_text("scripted")
    ask(blank, 1, "<script>alert(1)</script>")
    expect(answer(blank, 1)).to_have_attribute("data-state", "done")

    transcript = blank.get_by_test_id("transcript-1")
    assert answer(blank, 1).locator(".text").text_content() == f"{markup} & <b>bold</b>\nsecond line"
    assert transcript.locator(".msg.user .text").text_content() == "<script>alert(1)</script>"
    expect(transcript.locator("img, b, script")).to_have_count(0)
    assert blank.evaluate("window.pwned") is None
    expect(blank.get_by_test_id("usage-1")).to_have_text("prompt 9 tokens (4 cached), answer 3")
    expect(answer(blank, 1).locator(".meta")).to_contain_text("3 tokens")
    assert api.requests[0]["messages"] == [{"role": "user", "content": "<script>alert(1)</script>"}]
    assert api.requests[0]["model"] == "scripted"
    assert api.requests[0]["stream_options"] == {"include_usage": True}
    assert not api.unexpected, f"requests outside the prefix: {api.unexpected}"


def test_errors_are_shown_and_a_failed_question_leaves_the_history(blank: Page) -> None:
    api = ScriptedApi(
        blank,
        error(400, "This model's maximum context length is 1024 tokens"),
        {"stream": sse(chunk(role="assistant"), chunk("Half an"), {"error": {"message": "the worker died"}}, end="\n")},
        {"stream": sse(chunk("Fine."), chunk(finish="stop"), "[DONE]")},
        {"stream": sse(chunk("Cut"))},  # no [DONE]: the connection closed early
    )
    blank.goto(ORIGIN + PREFIX)
    expect(blank.get_by_test_id("model")).to_have_text("scripted")

    ask(blank, 0, "Too long")
    expect(blank.get_by_test_id("error-0")).to_have_text("HTTP 400: This model's maximum context length is 1024 tokens")
    expect(blank.get_by_test_id("input-0")).to_have_value("Too long")  # given back, to edit and send again
    expect(blank.get_by_test_id("key-form")).to_be_hidden()

    ask(blank, 0, "Tell me")
    expect(blank.get_by_test_id("error-0")).to_have_text("the worker died")
    expect(answer(blank, 0)).to_have_attribute("data-state", "error")
    expect(answer(blank, 0).locator(".text")).to_have_text("Half an")

    ask(blank, 0, "Again")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    expect(blank.get_by_test_id("error-0")).to_be_hidden()
    # The refused question is gone from the history; the one cut by the error stays with its partial answer.
    assert api.requests[2]["messages"] == [
        {"role": "user", "content": "Tell me"},
        {"role": "assistant", "content": "Half an"},
        {"role": "user", "content": "Again"},
    ]

    ask(blank, 0, "Once more")
    expect(blank.get_by_test_id("error-0")).to_have_text("The stream ended before data: [DONE]")
    expect(answer(blank, 0)).to_have_attribute("data-state", "error")


def test_401_offers_a_key_field_and_sends_the_key(blank: Page) -> None:
    api = ScriptedApi(blank, {"stream": sse(chunk("Hello"), chunk(finish="stop"), "[DONE]")}, key="sekrit")
    blank.goto(ORIGIN + PREFIX)
    expect(blank.get_by_test_id("status")).to_have_text("HTTP 401: Invalid API key")
    expect(blank.get_by_test_id("key-form")).to_be_visible()

    blank.get_by_test_id("api-key").fill("sekrit")
    blank.get_by_test_id("save-key").click()
    expect(blank.get_by_test_id("model")).to_have_text("scripted")
    expect(blank.get_by_test_id("status")).to_have_text("")
    ask(blank, 0, "Hi")
    expect(answer(blank, 0).locator(".text")).to_have_text("Hello")
    assert len(api.requests) == 1

    blank.reload()  # the key was kept in localStorage
    expect(blank.get_by_test_id("model")).to_have_text("scripted")
    expect(blank.get_by_test_id("api-key")).to_have_value("sekrit")
