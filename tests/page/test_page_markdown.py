"""The model's markdown on the chat page: rendered (headings, lists, emphasis, links, tables, code with a copy
button), and never a way in: markup, `javascript:` links and scripts in the model's text stay text."""

from __future__ import annotations

from playwright.sync_api import Browser, Page, Route, expect

from .conftest import ORIGIN, PREFIX, ScriptedApi, answer, ask, browsing, chunk, loaded, reply, sse

MARKDOWN = [
    "# Title\n\nSome **bold**, *emphasis* and `inline code`.\n\n",
    "- one\n- two\n\n1. first\n2. second\n\n",
    "| name | size |\n|------|-----:|\n| a | 1 |\n| b | 2 |\n\n",
    "See [the site](https://example.com/docs).\n\n",
    "```python\nprint('hi')\n",
    "x = 1 < 2\n```\n\nDone.",
]


def test_markdown_is_rendered_with_code_in_a_box_and_a_copy_button(browser: Browser) -> None:
    with browsing(browser, permissions=["clipboard-read", "clipboard-write"]) as page:
        usage = {"prompt_tokens": 9, "completion_tokens": 30, "prompt_tokens_details": {"cached_tokens": 4}}
        pieces = [chunk(p) for p in MARKDOWN]
        stream = sse(*pieces, chunk(finish="stop"), {**chunk(), "choices": [], "usage": usage}, "[DONE]")
        ScriptedApi(page, {"stream": stream})
        loaded(page, ORIGIN + PREFIX)
        ask(page, 0, "Show me markdown")
        expect(answer(page, 0)).to_have_attribute("data-state", "done")

        text = answer(page, 0).locator(".text")
        expect(text.locator("h1")).to_have_text("Title")
        expect(text.locator("strong")).to_have_text("bold")
        expect(text.locator("em")).to_have_text("emphasis")
        expect(text.locator("p code")).to_have_text("inline code")
        expect(text.locator("ul > li")).to_have_text(["one", "two"])
        expect(text.locator("ol > li")).to_have_text(["first", "second"])
        expect(text.locator("table th")).to_have_text(["name", "size"])
        expect(text.locator("table td")).to_have_text(["a", "1", "b", "2"])
        link = text.locator("a")
        expect(link).to_have_text("the site")
        expect(link).to_have_attribute("href", "https://example.com/docs")
        expect(link).to_have_attribute("target", "_blank")  # away from the conversation...
        expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")  # ...and unable to reach back

        block = text.locator(".code")
        expect(block.locator("pre code")).to_have_text("print('hi')\nx = 1 < 2\n")
        expect(block.locator(".code-bar")).to_contain_text("python")
        font = block.locator("pre code").evaluate("(el) => getComputedStyle(el).fontFamily")
        assert "monospace" in font, font
        string = block.locator("pre code .hljs-string")  # coloured by highlight.js, in our own palette
        expect(string).to_have_text(["'hi'"])
        colours = block.locator("pre code").evaluate(
            "(code) => [code, code.querySelector('.hljs-string')].map((el) => getComputedStyle(el).color)"
        )
        assert colours[0] != colours[1], colours
        block.locator(".copy").click()
        expect(block.locator(".copy")).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == "print('hi')\nx = 1 < 2\n"
        expect(page.get_by_test_id("usage-0")).to_have_text("prompt 9 tokens (4 cached), answer 30")


def test_an_answer_cut_mid_code_block_still_shows_its_code(blank: Page) -> None:
    """What was shown while streaming (an unclosed fence) is what stays when the stream breaks there."""
    died = {"error": {"message": "the worker died"}}
    broken = sse(chunk(role="assistant"), chunk("Here:\n\n```js\nconst a = 1;\n"), died)
    ScriptedApi(blank, {"stream": broken})
    loaded(blank, ORIGIN + PREFIX)
    ask(blank, 0, "Code please")
    expect(answer(blank, 0)).to_have_attribute("data-state", "error")
    expect(answer(blank, 0).locator(".text pre code")).to_have_text("const a = 1;\n")
    said = blank.get_by_test_id("error-0").locator(".error-text")
    expect(said).to_have_text("The answer was cut off: the worker died")


HOSTILE = [
    '<img src="x" onerror="window.pwned = 1">',
    "\n\n[click me](javascript:window.pwned=2) and [data](data:text/html;base64,PHNjcmlwdD4=)\n\n",
    "<script>window.pwned = 3</script>\n\n",
    '<a href="javascript:window.pwned=4">raw link</a> <iframe src="https://evil.example/"></iframe>\n\n',
    "![tracker](https://evil.example/pixel.png) <javascript:window.pwned=5>\n\n",
    '[ok](https://example.com/ "t") <svg onload="window.pwned=6"></svg> <b style="color:red">b</b>\n\n',
    "```html\n<script>window.pwned = 7</script>\n```\n",
]


def test_markup_from_the_model_or_the_person_is_never_markup(blank: Page) -> None:
    requests: list[str] = []
    blank.on("request", lambda r: requests.append(r.url))
    api = ScriptedApi(blank, reply(*HOSTILE))
    loaded(blank, ORIGIN + PREFIX)
    question = '<img src=x onerror="window.pwned=8"> <script>window.pwned=9</script>'
    ask(blank, 1, question)
    expect(answer(blank, 1)).to_have_attribute("data-state", "done")

    transcript = blank.get_by_test_id("transcript-1")
    expect(transcript.locator("img, script, iframe, svg, b, style, [onerror], [onload], [style]")).to_have_count(0)
    hrefs = transcript.locator("a").evaluate_all("(links) => links.map((a) => a.getAttribute('href'))")
    # Only http(s) links stay links (a bare address in the text is one too, as an image's address is: nothing is
    # fetched until the person follows it); javascript: and data: ones lost their target.
    assert "https://example.com/" in hrefs and all(h.startswith("https://") for h in hrefs), hrefs
    assert blank.evaluate("window.pwned") is None
    text = answer(blank, 1).locator(".text").text_content() or ""
    assert '<img src="x" onerror="window.pwned = 1">' in text  # shown, as the text it is
    assert "<script>window.pwned = 3</script>" in text
    expect(answer(blank, 1).locator("pre code")).to_have_text("<script>window.pwned = 7</script>\n")
    expect(transcript.locator(".msg.user .text")).to_have_text(question)
    assert api.requests[0]["messages"] == [{"role": "user", "content": question}]
    assert all(url.startswith(ORIGIN) for url in requests), requests  # nothing was fetched from elsewhere

    blank.reload()  # and the same from the browser's storage
    expect(blank.locator("body")).to_have_attribute("data-ready", "true")
    expect(transcript.locator(".msg")).to_have_count(2)
    expect(transcript.locator("img, script, iframe, svg, b, style, [onerror], [onload], [style]")).to_have_count(0)
    assert blank.evaluate("window.pwned") is None


def test_without_the_renderer_answers_show_as_plain_text(blank: Page) -> None:
    ScriptedApi(blank, reply("**not bold** <img src=x onerror='window.pwned=1'>"))

    def missing(route: Route) -> None:
        route.fulfill(status=404, body="not installed")

    blank.route(f"{ORIGIN}{PREFIX}static/vendor/**", missing)
    blank.goto(ORIGIN + PREFIX)
    expect(blank.locator("body")).to_have_attribute("data-markdown", "off")
    ask(blank, 0, "Hi")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    expect(answer(blank, 0).locator(".text")).to_have_text("**not bold** <img src=x onerror='window.pwned=1'>")
    expect(answer(blank, 0).locator("strong, img")).to_have_count(0)
    assert blank.evaluate("window.pwned") is None
