"""The chat page in a real browser: Debian's headless chromium, driven by Playwright's sync API.

The tests are plain functions: Playwright's sync API refuses to run inside an event loop, and the servers run in
threads of their own (tests/helpers/serving.py). Two kinds of test: against the real server (a model answers),
and against a scripted API (`ScriptedApi`: Playwright answers every request of a made-up origin, so that the page
meets what a real model seldom says, such as markup, errors and exact markdown).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, Route, expect, sync_playwright

from ..helpers.paths import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SLOW = 90_000  # ms: a first token on a busy 2-core machine, with both panes decoding
# What the page says, for a person, when the server wants a key and when it refused the one given.
ASKS_KEY = "This server asks for an API key. Enter it in the field at the top."
WRONG_KEY = "The server did not accept this API key. Check it, then save it again."
ARTIFACTS = Path(os.environ.get("LLAMA_ISOLATE_ARTIFACTS", ROOT / "build" / "test-artifacts"))


@pytest.fixture(scope="module")  # not longer: while Playwright's sync API runs, no other test can run an event loop
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
def browsing(browser: Browser, viewport: dict[str, int] | None = None, **options: object) -> Iterator[Page]:
    """A page in a fresh context (its own storage); an uncaught script error in it fails the test."""
    context = browser.new_context(viewport=viewport or DESKTOP, **options)  # type: ignore[arg-type]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def loaded(page: Page, url: str) -> Page:
    """Opens the page and waits until it has drawn its panes (its scripts, the markdown renderer among them)."""
    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    assert page.locator("body").get_attribute("data-markdown") != "off", "the markdown renderer did not load"
    return page


def answer(page: Page, pane: int) -> Locator:
    """The pane's latest answer bubble."""
    return page.get_by_test_id(f"transcript-{pane}").locator(".msg.assistant").last


def ask(page: Page, pane: int, question: str) -> None:
    page.get_by_test_id(f"input-{pane}").fill(question)
    page.get_by_test_id(f"send-{pane}").click()


def settings(page: Page, pane: int, **values: str) -> None:
    """Opens the pane's settings (if closed) and fills them: system, temperature, top_p, max_tokens."""
    if page.get_by_test_id(f"settings-{pane}").is_hidden():
        page.get_by_test_id(f"settings-toggle-{pane}").click()
    for name, value in values.items():
        page.get_by_test_id(f"{name.replace('_', '-')}-{pane}").fill(value)


def shot(page: Page, name: str) -> Path:
    """A screenshot, kept as a test artefact (build/test-artifacts, or $LLAMA_ISOLATE_ARTIFACTS)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


# --- the scripted API ---------------------------------------------------------------------------------------------
STATIC = ROOT / "src" / "llama_isolate" / "server" / "static"
ORIGIN = "http://chat.localhost"  # *.localhost is a secure context, as 127.0.0.1 is: the clipboard API works
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


def reply(*pieces: str) -> dict[str, object]:
    """A whole streamed answer made of `pieces`."""
    return {"stream": sse(chunk(role="assistant"), *(chunk(p) for p in pieces), chunk(finish="stop"), "[DONE]")}


def error(status: int, message: str, code: str | None = None) -> dict[str, object]:
    return {
        "status": status,
        "body": {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}},
    }


class ScriptedApi:
    """Answers the page's requests: its static files under PREFIX, GET v1/models, and chat answers from a list."""

    def __init__(
        self,
        page: Page,
        *answers: dict[str, object],
        key: str | None = None,
        models: tuple[str, ...] = ("scripted",),
        images: bool = False,
    ) -> None:
        self.answers = list(answers)
        self.key = key
        self.models = models
        self.modalities = ["text", "image"] if images else ["text"]
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
        if rest == "" or rest.startswith("static/"):
            file = (STATIC / (rest.removeprefix("static/") or "index.html")).resolve()
            if file.is_relative_to(STATIC) and file.is_file() and file.suffix in TYPES:
                route.fulfill(body=file.read_text(), content_type=TYPES[file.suffix])
            else:
                self.unexpected.append(request.url)
                route.fulfill(status=404, body="no such file")
            return
        if self.key is not None and request.headers.get("authorization") != f"Bearer {self.key}":
            message = "the request has a wrong API key" if "authorization" in request.headers else "no API key"
            route.fulfill(status=401, json=error(401, message, "invalid_api_key")["body"])
            return
        if rest == "v1/models" and request.method == "GET":
            data = [
                {"id": m, "object": "model", "owned_by": "test", "input_modalities": self.modalities}
                for m in self.models
            ]
            route.fulfill(json={"object": "list", "data": data})
            return
        if rest == "v1/chat/completions" and request.method == "POST":
            self.requests.append(json.loads(request.post_data or "{}"))
            answer = self.answers.pop(0)
            if answer.get("hang"):
                return  # never answered: the page waits for its first token until it stops or goes away
            if "stream" in answer:
                route.fulfill(body=str(answer["stream"]), content_type="text/event-stream")
            else:
                route.fulfill(status=int(answer["status"]), json=answer["body"])  # type: ignore[call-overload]
            return
        self.unexpected.append(request.url)
        route.fulfill(status=404, json={"error": {"message": "no such route"}})


@pytest.fixture
def blank(browser: Browser) -> Iterator[Page]:
    """A fresh page, not yet opened: route it with `ScriptedApi`, then `loaded(blank, ORIGIN + PREFIX)`."""
    with browsing(browser) as p:
        yield p
