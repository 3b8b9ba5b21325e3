"""Conversations on the chat page: kept across a reload, listed (switch, rename, delete), each with its own
settings; regenerate the last answer, edit a question and send it again; errors in words a person can act on,
and a question that got no answer given back."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from .conftest import ASKS_KEY, ORIGIN, PREFIX, ScriptedApi, answer, ask, chunk, error, loaded, reply, settings, sse


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
    expect(message).to_have_text("The answer was cut off: the stream ended before data: [DONE]")
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


def test_broken_storage_is_skipped_not_trusted(blank: Page) -> None:
    ScriptedApi(blank, reply("ok"))
    blank.add_init_script(
        """if (!sessionStorage.getItem("seeded")) {
            sessionStorage.setItem("seeded", "1");
            localStorage.setItem("llama-isolate.conversations", JSON.stringify({version: 1, open: ["bad", "good"],
              conversations: [
                {id: "bad", messages: [{role: "system", content: "<img src=x onerror=window.pwned=1>"}]},
                {id: "good", title: "Kept", messages: [{role: "user", content: "hi", images: ["javascript:1"]}]},
                "nonsense", null
              ]}));
        }"""
    )
    loaded(blank, ORIGIN + PREFIX)
    expect(blank.get_by_test_id("conversation").locator(".open")).to_have_text(["Kept"])
    expect(blank.get_by_test_id("transcript-0").locator("img")).to_have_count(0)
    expect(blank.get_by_test_id("title-0")).to_have_text("Kept")  # the bad one's place went to the one kept
    assert blank.evaluate("window.pwned") is None


def test_two_tabs_share_the_conversations_and_lose_none(blank: Page) -> None:
    api = ScriptedApi(blank, reply("From the first tab"), reply("From the second tab"))
    loaded(blank, ORIGIN + PREFIX)
    other = blank.context.new_page()
    ScriptedApi(other).answers = api.answers  # one script, whichever tab asks
    loaded(other, ORIGIN + PREFIX)

    ask(blank, 0, "First tab")
    expect(answer(blank, 0)).to_have_attribute("data-state", "done")
    expect(other.get_by_test_id("conversation").locator(".open")).to_have_text(["First tab"])  # seen at once
    ask(other, 1, "Second tab")  # written by a tab that had not read the first one's conversation itself
    expect(answer(other, 1)).to_have_attribute("data-state", "done")
    expect(blank.get_by_test_id("conversation").locator(".open")).to_have_text(["Second tab", "First tab"])

    blank.once("dialog", lambda dialog: dialog.accept())
    blank.get_by_test_id("conversation").filter(has_text="Second tab").locator(".delete").click()
    expect(other.get_by_test_id("conversation").locator(".open")).to_have_text(["First tab"])
    expect(other.get_by_test_id("transcript-1").locator(".msg")).to_have_count(0)  # the pane that showed it moved on

    reload(blank)
    expect(blank.get_by_test_id("conversation").locator(".open")).to_have_text(["First tab"])
