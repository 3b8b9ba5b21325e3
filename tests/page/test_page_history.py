"""Conversations on the chat page: kept across a reload, listed (switch, rename, delete), each with its own
settings; regenerate the last answer, edit a question and send it again; errors in words a person can act on,
and a question that got no answer given back."""

from __future__ import annotations

import base64

from playwright.sync_api import Page, Route, expect

from ..helpers.pictures import RED
from .conftest import (
    ASKS_KEY,
    DESKTOP,
    ORIGIN,
    PHONE,
    PREFIX,
    ScriptedApi,
    answer,
    ask,
    chunk,
    error,
    loaded,
    reply,
    settings,
    sse,
)


def reload(page: Page) -> None:
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def test_a_reload_keeps_every_conversation_and_what_each_pane_showed(blank: Page) -> None:
    api = ScriptedApi(blank, reply("First **answer**"), reply("Second answer"), reply("Third"), reply("Fourth"))
    loaded(blank, ORIGIN + PREFIX)
    ask(blank, 0, "First question")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    ask(blank, 0, "Second question")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    ask(blank, 1, "Other pane")
    expect(answer(blank, 1)).to_have_attribute("data-state", "done")

    reload(blank)
    expect(blank.get_by_test_id("transcript-0").locator(".msg .text")).to_have_text(
        ["First question", "First answer", "Second question", "Second answer"]
    )
    expect(blank.get_by_test_id("transcript-0").locator("strong")).to_have_text("answer")  # markdown again
    expect(blank.get_by_test_id("transcript-1").locator(".msg .text")).to_have_text(["Other pane", "Third"])
    expect(blank.get_by_test_id("conversation")).to_have_count(2)
    expect(blank.get_by_test_id("title-0")).to_have_text("First question")

    ask(blank, 0, "Third question")  # and the conversation goes on from what was kept
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    assert [m["content"] for m in api.requests[-1]["messages"]] == [
        "First question",
        "First **answer**",
        "Second question",
        "Second answer",
        "Third question",
    ]


def test_the_list_switches_renames_and_deletes_and_settings_stay_with_their_conversation(blank: Page) -> None:
    api = ScriptedApi(blank, reply("Arr"), reply("Beep"), reply("Arr again"))
    loaded(blank, ORIGIN + PREFIX)
    settings(blank, 0, system="Talk like a pirate.", temperature="1.2")
    ask(blank, 0, "Hello pirate")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")

    blank.get_by_test_id("new-chat").click()  # a new conversation in the same pane, with its settings to start
    expect(blank.get_by_test_id("transcript-0").locator(".msg")).to_have_count(0)
    expect(blank.get_by_test_id("system-0")).to_have_value("Talk like a pirate.")
    settings(blank, 0, system="Talk like a robot.")
    ask(blank, 0, "Hello robot")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    items = blank.get_by_test_id("conversation")
    expect(items.locator(".open")).to_have_text(["Hello robot", "Hello pirate"])  # the latest first

    items.filter(has_text="Hello pirate").locator(".open").click()
    expect(blank.get_by_test_id("transcript-0").locator(".msg .text")).to_have_text(["Hello pirate", "Arr"])
    expect(blank.get_by_test_id("system-0")).to_have_value("Talk like a pirate.")
    ask(blank, 0, "More")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    assert api.requests[1]["messages"][0] == {"role": "system", "content": "Talk like a robot."}
    assert api.requests[2]["messages"][0] == {"role": "system", "content": "Talk like a pirate."}
    assert api.requests[2]["temperature"] == 1.2

    items.filter(has_text="Hello pirate").locator(".rename").click()
    field = blank.get_by_test_id("sidebar").locator(".rename-field")
    field.fill("The pirate")
    field.press("Enter")
    expect(blank.get_by_test_id("title-0")).to_have_text("The pirate")
    blank.once("dialog", lambda dialog: dialog.accept())
    items.filter(has_text="Hello robot").locator(".delete").click()
    expect(items.locator(".open")).to_have_text(["The pirate"])

    reload(blank)
    expect(blank.get_by_test_id("conversation").locator(".open")).to_have_text(["The pirate"])
    expect(blank.get_by_test_id("title-0")).to_have_text("The pirate")
    expect(blank.get_by_test_id("temperature-0")).to_have_value("1.2")


def test_regenerate_and_edit_a_question_send_the_right_history(blank: Page) -> None:
    api = ScriptedApi(blank, reply("One"), reply("Two"), reply("Again"), reply("Edited answer"))
    loaded(blank, ORIGIN + PREFIX)
    ask(blank, 0, "First")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    ask(blank, 0, "Second")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    transcript = blank.get_by_test_id("transcript-0")
    expect(transcript.locator(".regenerate")).to_have_count(1)  # the last answer only

    transcript.locator(".regenerate").click()
    expect(answer(blank, 0).locator(".text")).to_have_text("Again")
    expect(transcript.locator(".msg .text")).to_have_text(["First", "One", "Second", "Again"])
    assert [m["content"] for m in api.requests[2]["messages"]] == ["First", "One", "Second"]

    transcript.locator(".msg.user").first.locator(".edit").click()
    editor = transcript.locator(".edit-text")
    expect(editor).to_have_value("First")
    editor.fill("First, better")
    transcript.locator(".edit-send").click()
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    expect(transcript.locator(".msg .text")).to_have_text(["First, better", "Edited answer"])
    assert api.requests[3]["messages"] == [{"role": "user", "content": "First, better"}]

    reload(blank)
    expect(blank.get_by_test_id("transcript-0").locator(".msg .text")).to_have_text(["First, better", "Edited answer"])


def test_errors_are_said_in_words_and_a_question_without_answer_is_given_back(blank: Page) -> None:
    api = ScriptedApi(
        blank,
        error(400, "the conversation needs 900 tokens, and the context holds 512", "context_length_exceeded"),
        {"stream": sse(chunk(role="assistant"), chunk("Half an"), {"error": {"message": "the worker died"}}, end="\n")},
        {"stream": sse(chunk("Fine."), chunk(finish="stop"), "[DONE]")},
        {"stream": sse(chunk("Cut"))},  # no [DONE]: the connection closed early
        error(429, "the queue is full (256 waiting)", "queue_full"),
    )
    loaded(blank, ORIGIN + PREFIX)

    ask(blank, 0, "Too long")
    message = blank.get_by_test_id("error-0").locator(".error-text")
    expect(message).to_have_text(
        "This conversation is too long for the model (it reads at most 512 tokens at once). Start a new conversation, "
        "edit an earlier question, or lower the answer's max tokens."
    )
    expect(blank.get_by_test_id("error-0").locator("details")).to_contain_text("HTTP 400: the conversation needs 900")
    expect(blank.get_by_test_id("input-0")).to_have_value("Too long")  # given back, to edit and send again
    expect(blank.get_by_test_id("key-form")).to_be_hidden()

    ask(blank, 0, "Tell me")
    expect(message).to_have_text("The answer was cut off: the worker died")
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
    expect(message).to_have_text("The answer was cut off: the connection closed before it ended.")
    expect(answer(blank, 0)).to_have_attribute("data-state", "error")

    ask(blank, 0, "Busy?")
    expect(message).to_have_text("The server is busy with other requests. Try again in a moment.")


def test_401_offers_a_key_field_and_sends_the_key(blank: Page) -> None:
    api = ScriptedApi(blank, reply("Hello"), key="sekrit")
    loaded(blank, ORIGIN + PREFIX)
    expect(blank.get_by_test_id("status")).to_have_text(ASKS_KEY)
    expect(blank.get_by_test_id("key-form")).to_be_visible()

    blank.get_by_test_id("api-key").fill("sekrit")
    blank.get_by_test_id("save-key").click()
    expect(blank.get_by_test_id("model-0")).to_have_value("scripted")
    expect(blank.get_by_test_id("status")).to_have_text("")
    ask(blank, 0, "Hi")
    expect(answer(blank, 0).locator(".text")).to_have_text("Hello")
    assert len(api.requests) == 1

    reload(blank)  # the key was kept in localStorage
    expect(blank.get_by_test_id("model-0")).to_have_value("scripted")
    expect(blank.get_by_test_id("api-key")).to_have_value("sekrit")


def test_a_turn_that_gets_nothing_back_leaves_the_conversation_as_it_was(blank: Page) -> None:
    api = ScriptedApi(
        blank,
        reply("The good answer"),
        error(503, "the model is not ready (restarting); try again shortly", "model_not_ready"),
        {"stream": sse(chunk(role="assistant"))},  # closed before a word and before [DONE]
        reply("Finally"),
    )
    loaded(blank, ORIGIN + PREFIX)
    ask(blank, 0, "Question")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    transcript = blank.get_by_test_id("transcript-0")

    transcript.locator(".regenerate").click()  # refused: the answer it was to replace stays
    said = blank.get_by_test_id("error-0").locator(".error-text")
    expect(said).to_have_text("The model is still loading. Try again in a moment.")
    expect(transcript.locator(".msg .text")).to_have_text(["Question", "The good answer"])
    expect(transcript.locator(".regenerate")).to_have_text("Regenerate")

    transcript.locator(".msg.user .edit").click()  # an edit that gets nothing back: the old turns stay too
    transcript.locator(".edit-text").fill("Question, edited")
    transcript.locator(".edit-send").click()
    expect(said).to_have_text("The server closed the connection before answering. Try again.")
    expect(transcript.locator(".msg .text")).to_have_text(["Question", "The good answer"])

    ask(blank, 0, "Next")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    roles = [m["role"] for m in api.requests[3]["messages"]]
    assert roles == ["user", "assistant", "user"], roles
    reload(blank)
    expect(blank.get_by_test_id("transcript-0").locator(".msg .text")).to_have_text(
        ["Question", "The good answer", "Next", "Finally"]
    )


def test_a_reload_before_the_first_token_keeps_the_question_to_answer(blank: Page) -> None:
    api = ScriptedApi(blank, {"hang": True}, reply("Answered after the reload"))
    loaded(blank, ORIGIN + PREFIX)
    ask(blank, 0, "Are you there?")
    expect(blank.get_by_test_id("pane-0")).to_have_attribute("data-state", "waiting")
    reload(blank)
    transcript = blank.get_by_test_id("transcript-0")
    expect(transcript.locator(".msg .text")).to_have_text(["Are you there?"])
    expect(transcript.locator(".regenerate")).to_have_text("Answer")  # for a question left unanswered
    transcript.locator(".regenerate").click()
    expect(answer(blank, 0).locator(".text")).to_have_text("Answered after the reload")
    assert api.requests[1]["messages"] == [{"role": "user", "content": "Are you there?"}]


def test_settings_are_checked_as_people_write_numbers(blank: Page) -> None:
    api = ScriptedApi(blank, reply("ok"))
    loaded(blank, ORIGIN + PREFIX)
    said = blank.get_by_test_id("error-0").locator(".error-text")
    for field, value, start in [
        ("temperature", "1e3", "Temperature must be a number from 0 up to 2"),
        ("temperature", "0x1", "Temperature must be a number from 0 up to 2"),
        ("top_p", "0", "Top-p must be a number above 0 up to 1"),
        ("max_tokens", "99999999999999999999999", "Max tokens must be a whole number from 1 to 2147483647"),
        ("max_tokens", "1.5", "Max tokens must be a whole number"),
    ]:
        settings(blank, 0, **{field: value})
        ask(blank, 0, "Hi")
        expect(said).to_contain_text(start)
        settings(blank, 0, **{field: ""})
    settings(blank, 0, temperature=" 0.5 ", top_p=".9", max_tokens="7")
    ask(blank, 0, "Hi")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    body = api.requests[0]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.5, 0.9, 7)


def test_what_the_server_says_is_clipped_and_read_for_a_person(blank: Page) -> None:
    huge = "x" * 200_000
    ScriptedApi(blank, error(400, huge, "invalid_value"))
    loaded(blank, ORIGIN + PREFIX)
    ask(blank, 0, "Hi")
    box = blank.get_by_test_id("error-0")
    expect(box.locator(".error-text")).to_contain_text("(200000 characters in all)")
    blank.get_by_test_id("error-0").locator("summary").click()
    height = (box.bounding_box() or {}).get("height", 0)
    assert 0 < height < 300, height
    compose = blank.get_by_test_id("compose-0").bounding_box()
    assert compose and compose["y"] + compose["height"] <= 800  # the box to write in is still on screen


def test_a_model_list_the_page_cannot_read_is_said_so(blank: Page) -> None:
    def html(route: Route) -> None:
        route.fulfill(body="<html>login</html>", content_type="text/html")

    ScriptedApi(blank)
    blank.route(f"{ORIGIN}{PREFIX}v1/models", html)
    loaded(blank, ORIGIN + PREFIX)
    expect(blank.get_by_test_id("status")).to_have_text(
        "The server's list of models could not be read. Is this an OpenAI-style API?"
    )
    ask(blank, 0, "Hi")
    expect(blank.get_by_test_id("error-0").locator(".error-text")).to_have_text(
        "There is no model to ask yet: the server's list of models did not load."
    )
    expect(blank.get_by_test_id("input-0")).to_have_value("Hi")


def test_one_conversation_is_never_in_two_panes(blank: Page) -> None:
    api = ScriptedApi(blank, reply("A"), reply("B"), reply("C"))
    loaded(blank, ORIGIN + PREFIX)
    ask(blank, 0, "Left")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    ask(blank, 1, "Right")
    expect(answer(blank, 1)).to_have_attribute("data-state", "done")

    blank.set_viewport_size(PHONE)  # a phone turned, a window narrowed: the right pane is hidden
    blank.get_by_test_id("menu").click()
    blank.get_by_test_id("conversation").filter(has_text="Right").locator(".open").click()
    expect(blank.get_by_test_id("title-0")).to_have_text("Right")
    blank.set_viewport_size(DESKTOP)
    expect(blank.get_by_test_id("title-1")).to_have_text("New conversation")  # it gave the conversation up
    ask(blank, 0, "More")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    assert [m["content"] for m in api.requests[2]["messages"]] == ["Right", "B", "More"]


def test_a_question_given_back_goes_before_what_was_written_since(blank: Page) -> None:
    ScriptedApi(blank, error(503, "the model is not ready", "model_not_ready"))
    loaded(blank, ORIGIN + PREFIX)
    blank.route(f"{ORIGIN}{PREFIX}v1/chat/completions", lambda route: None)  # waits: typed into meanwhile
    ask(blank, 0, "First thought")
    expect(blank.get_by_test_id("pane-0")).to_have_attribute("data-state", "waiting")
    blank.get_by_test_id("input-0").fill("second thought")
    blank.get_by_test_id("stop-0").click()
    expect(blank.get_by_test_id("input-0")).to_have_value("First thought\n\nsecond thought")
    expect(blank.get_by_test_id("transcript-0").locator(".msg")).to_have_count(0)


def test_a_web_page_instead_of_the_api_is_said_so(blank: Page) -> None:
    ScriptedApi(blank)
    page = "<!DOCTYPE html><html><head><title>Access denied</title></head><body>no</body></html>"
    blank.route(
        f"{ORIGIN}{PREFIX}v1/models",
        lambda route: route.fulfill(status=403, body=page, content_type="text/html"),
    )
    loaded(blank, ORIGIN + PREFIX)
    expect(blank.get_by_test_id("status")).to_have_text(
        "The server answered with a web page instead of the API (HTTP 403). Is something in between refusing the "
        "request?"
    )


def test_images_come_by_paste_and_drop_and_only_images(blank: Page) -> None:
    api = ScriptedApi(blank, reply("I see two"), images=True)
    loaded(blank, ORIGIN + PREFIX)
    png = base64.b64encode(RED.data).decode()
    give = """([how, png]) => {
        const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "red.png", { type: "image/png" }));
        data.items.add(new File(["not an image"], "notes.txt", { type: "text/plain" }));
        const input = document.querySelector('[data-testid="input-0"]');
        const event = how === "paste"
            ? new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true })
            : new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true });
        input.dispatchEvent(event);
    }"""
    blank.evaluate(give, ["paste", png])
    blank.evaluate(give, ["drop", png])
    expect(blank.get_by_test_id("attachments-0").locator("img")).to_have_count(2)  # the text file was left out
    blank.get_by_test_id("send-0").click()  # images alone make a question
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    uri = f"data:image/png;base64,{png}"
    assert api.requests[0]["messages"] == [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}] * 2}
    ]
    expect(blank.get_by_test_id("conversation").locator(".open")).to_have_text(["Image"])
